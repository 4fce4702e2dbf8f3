"""Everything that speaks to the OpenVMS job journal: wire protocol, client and reference service.

The server side of this package (``protocol`` and ``server``) runs on VSI Python 3.10 for OpenVMS,
so it imports only the standard library; ``python -m vms_adapter.server`` loads this module too,
which holds it to the same rule.
"""
