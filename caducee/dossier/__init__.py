"""The patient dossier (Mon espace santé's dossier médical): documents fed by professionals
(API, IHE_XDM.ZIP by mail) and by the patient, masking, blocking, emergency access, the
medical profile; every access recorded in the access history."""
