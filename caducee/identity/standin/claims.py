"""PSC's claim shape: what its userinfo, ID tokens and access tokens say about a professional.

Modelled on PSC's published userinfo (SubjectNameID, SubjectRefPro with exercices and
activities, SubjectRole, otherIds...) and on its Keycloak access tokens (preferred_username
is the national id, azp the client, acr the authentication level).
"""

from __future__ import annotations

import uuid
from typing import Any

from caducee.identity.standin.config import StandinUser

_NAMESPACE = uuid.UUID("6f1c3a52-8d0e-4b7a-9c1e-2a4b5c6d7e8f")


def subject(user: StandinUser) -> str:
    """PSC's `sub`: a federated Keycloak id ending with the national id."""
    return f"f:{uuid.uuid5(_NAMESPACE, user.national_id)}:{user.national_id}"


def userinfo(user: StandinUser) -> dict[str, Any]:
    origin = {"8": "RPPS", "0": "ADELI"}.get(user.national_id[:1], "AUTRE")
    activity = {
        "codeModeExercice": "L",
        "codeSecteurDactivite": "SA07",
        "codeSectionPharmacien": "",
        "codeRole": "",
        "codeGenreActivite": "GENR01",
        "numeroSiretSite": user.siret,
        "numeroSirenSite": user.siret[:9],
        "numeroFinessSite": user.finess,
        "numeroFinessetablissementJuridique": "",
        "identifiantTechniqueDeLaStructure": user.structure_id,
        "raisonSocialeSite": user.structure_name,
        "enseigneCommercialeSite": "",
        "codePostal": user.postcode,
        "codePays": "99000",
    }
    return {
        "sub": subject(user),
        "preferred_username": user.national_id,
        "SubjectNameID": user.national_id,
        "given_name": user.first_name,
        "family_name": user.last_name,
        "codeCivilite": user.civility,
        "email": user.email,
        "SubjectOrganization": user.structure_name,
        "SubjectOrganizationID": user.structure_id,
        "SubjectRole": [f"{user.profession_code}^1.2.250.1.213.1.1.5.5"],
        "SubjectRefPro": {
            "codeCivilite": user.civility,
            "exercices": [
                {
                    "codeProfession": user.profession_code,
                    "codeCategorieProfessionnelle": user.category,
                    "codeCiviliteDexercice": user.civility,
                    "nomDexercice": user.last_name,
                    "prenomDexercice": user.first_name,
                    "codeTypeSavoirFaire": "S" if user.savoir_faire else "",
                    "codeSavoirFaire": user.savoir_faire,
                    "activities": [activity],
                }
            ],
        },
        "otherIds": [{"identifiant": user.national_id[1:], "origine": origin, "qualite": 1}],
        "Secteur_Activite": "SA07^1.2.250.1.71.4.2.4",
        "Palier_Authentification": "APPPRIP3^1.2.250.1.213.1.5.1.1.1",
        "Mode_Acces_Raison": "",
        "Acces_Regulation_Medicale": "FAUX",
        "UITVersion": "1.0",
    }
