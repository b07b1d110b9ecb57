"""The access history: who read which patient data, when. Append-only; the patient reads it."""
