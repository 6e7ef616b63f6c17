"""kiln's REST API: Azure VM Image Builder's own paths, so Azure's SDK drives kiln unchanged.

`kiln serve` runs it (kiln.cli.serve_cmds). app.py is HTTP (routes, ARM conventions, tokens);
service.py is what it does (templates, runs, operations, Azure's rules); executor.py runs builds
in child processes (child.py); resources.py is its catalog tables; errors.py ARM's error shape;
settings.py how it serves and which local paths an API template may name. tls.py is HTTPS (kiln's
self-signed certificate or the user's); identity.py the managed-identity stand-in and its JWTs;
metadata.py the cloud endpoints, subscriptions and locations az asks for; quota.py the run limit per token.
"""
