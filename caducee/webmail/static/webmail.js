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

// An error after a form: focus moves to the sentence that says what to correct.
const error = document.getElementById("erreur");
if (error) {
  error.focus();
}

// A print button where the print page has one (the browser's own command works without it).
document.querySelectorAll("[data-print]").forEach((button) => {
  button.hidden = false;
  button.addEventListener("click", () => window.print());
});

// The session ends after some minutes without a request, and typing is not a request.
// Two minutes before, a banner says so and offers to stay signed in (WCAG 2.2.1); what
// is typed is also kept by the server if the form is sent after the end.
const idle = Number(document.body.dataset.idleSeconds || 0);
if (idle > 0) {
  const warning = document.getElementById("fin-session");
  const sentence = document.getElementById("fin-session-texte");
  const stay = document.getElementById("rester");
  const warnBefore = Math.min(120, idle / 2);
  let warnTimer = null;
  let endTimer = null;
  let lastFocus = null;
  const schedule = () => {
    clearTimeout(warnTimer);
    clearTimeout(endTimer);
    warnTimer = setTimeout(() => {
      lastFocus = document.activeElement;
      sentence.textContent = "Pour protéger vos données, votre session va se terminer dans " + Math.round(warnBefore / 60) +
        " minute" + (warnBefore >= 120 ? "s" : "") + ". Votre texte n'est pas perdu.";
      warning.hidden = false;
      stay.hidden = false;
      stay.focus();
    }, (idle - warnBefore) * 1000);
    endTimer = setTimeout(() => {
      sentence.textContent = "Votre session a pris fin. Si vous écriviez un message, cliquez sur « Envoyer » : " +
        "votre texte sera gardé et vous le retrouverez après vous être reconnecté.";
      stay.hidden = true;
    }, idle * 1000);
  };
  stay.addEventListener("click", async () => {
    const answer = await fetch("/api/v1/session/extend", {
      method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": document.body.dataset.csrf },
    });
    if (answer.ok) {
      warning.hidden = true;
      schedule();
      if (lastFocus && lastFocus.focus) lastFocus.focus();
    } else {
      sentence.textContent = "Votre session a déjà pris fin. Reconnectez-vous pour continuer.";
      stay.hidden = true;
    }
  });
  schedule();
}
