"""Who a client is: mail-client logins (passwords now, Pro Santé Connect tokens next), checked against the annuaire."""
