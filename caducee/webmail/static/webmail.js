// Small improvements over pages that work without JavaScript.
"use strict";

// A form that sends a file shows that it is working and cannot be sent twice.
document.querySelectorAll("form[data-sending]").forEach((form) => {
  form.addEventListener("submit", (event) => {
    const file = form.querySelector('input[type="file"][data-max]');
    if (file && file.files.length && file.files[0].size > Number(file.dataset.max)) {
      event.preventDefault();
      showFileError(file, "Ce fichier est trop lourd : la limite est de " + Math.round(file.dataset.max / 1048576) + " Mo.");
      return;
    }
    const button = form.querySelector('button[type="submit"]');
    if (button) {
      button.disabled = true;
      button.textContent = form.dataset.sending;
    }
  });
});

function showFileError(input, text) {
  let box = input.parentElement.querySelector(".error");
  if (!box) {
    box = document.createElement("p");
    box.className = "error";
    box.setAttribute("role", "alert");
    input.parentElement.appendChild(box);
  }
  box.textContent = text;
  input.setAttribute("aria-invalid", "true");
  input.focus();
}

// The pharmacy search answers as one types, through the JSON API.
const search = document.getElementById("recherche-pharmacie");
if (search) {
  const results = document.getElementById("resultats");
  let timer = null;
  let last = "";
  const run = async () => {
    const name = search.elements.nom.value.trim();
    const place = search.elements.lieu.value.trim();
    const key = name + "|" + place;
    if ((name.length < 2 && place.length < 2) || key === last) return;
    last = key;
    const url = "/api/v1/pharmacies?" + new URLSearchParams({ name: name, place: place });
    const answer = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!answer.ok) return;
    const data = await answer.json();
    results.replaceChildren();
    const title = document.createElement("h2");
    title.textContent = data.total ? data.total + (data.total > 1 ? " pharmacies trouvées" : " pharmacie trouvée")
                                   : "Aucune pharmacie ne correspond. Essayez avec seulement la ville ou le code postal.";
    results.appendChild(title);
    const list = document.createElement("ul");
    list.className = "results";
    for (const item of data.items) {
      const li = document.createElement("li");
      const who = document.createElement("p");
      who.className = "who";
      who.textContent = item.name;
      const where = document.createElement("p");
      where.className = "detail";
      where.textContent = item.address_line + ", " + item.postcode + " " + item.city;
      const choose = document.createElement("a");
      choose.className = "button";
      choose.href = "/ordonnance/envoi?pharmacie=" + encodeURIComponent(item.address);
      choose.textContent = "Choisir " + item.name;
      li.append(who, where, choose);
      list.appendChild(li);
    }
    results.appendChild(list);
  };
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(run, 300);
  });
}
