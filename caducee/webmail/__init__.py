"""The patient webmail: server-rendered French pages and the JSON API they use."""
