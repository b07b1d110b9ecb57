"""Who a client is: password logins for mail clients, and Pro Santé Connect (the portal's
sign-in, bearer tokens on the APIs, OAUTHBEARER/XOAUTH2 on IMAP and SMTP), checked against the annuaire."""
