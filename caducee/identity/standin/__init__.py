"""A local OpenID provider that stands in for Pro Santé Connect (tests, `serve --demo`).

Built on authlib's authorization server (the protocol: authorization requests, PKCE,
codes, client authentication, refresh) and joserfc (the tokens), it runs as its own
process with its own keys, and Caducée talks to it over HTTP exactly as it would to PSC:
discovery, keys, the authorization page, the token endpoint, userinfo, logout. Its
realms, clients and professionals come from a JSON file (`config.StandinConfig`); what it
issues has PSC's claim shape (`claims`).

It is a test double, never an identity provider: anyone who reaches its page may sign in
as any professional it knows. `serve --demo` binds it to the loopback address.
"""
