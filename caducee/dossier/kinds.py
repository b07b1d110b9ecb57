"""The dossier's vocabularies: document types (LOINC, as the DMP uses them), formats, the
sections of the medical profile. Labels are French: they are shown to patients."""

from __future__ import annotations

TYPES = {
    "11488-4": "Compte rendu de consultation",
    "34133-9": "Synthèse d'épisode de soins",
    "60591-5": "Synthèse médicale",
    "11490-0": "Lettre de liaison de sortie",
    "57833-6": "Prescription de médicaments",
    "11502-2": "Compte rendu d'examen biologique",
    "18748-4": "Compte rendu d'imagerie médicale",
    "11526-1": "Compte rendu d'anatomopathologie",
    "34794-8": "Compte rendu de réunion de concertation",
    "11369-6": "Historique des vaccinations",
    "DOCPAT": "Document ajouté par le patient",
}
PATIENT_TYPES = ("DOCPAT", "11502-2", "18748-4", "11488-4", "57833-6", "11369-6")  # what a patient may file their own upload as


def type_label(code: str) -> str:
    return TYPES.get(code, f"Document ({code})" if code else "Document")


SECTIONS = {
    "antecedent": "Antécédents médicaux et chirurgicaux",
    "allergy": "Allergies et intolérances",
    "treatment": "Traitements habituels",
    "vaccination": "Vaccinations",
    "contact": "Personnes à prévenir en cas d'urgence",
    "directive": "Directives anticipées",
    "donation": "Don d'organes",
    "measure": "Mesures",
}
MEASURES = {  # kind -> (label, unit)
    "weight": ("Poids", "kg"),
    "height": ("Taille", "cm"),
    "blood-pressure": ("Tension artérielle", "mmHg"),
    "glucose": ("Glycémie", "g/L"),
}
