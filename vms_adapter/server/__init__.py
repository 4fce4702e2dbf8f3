"""The reference journal service: the XPipe system of record that runs on OpenVMS (stdlib only)."""
