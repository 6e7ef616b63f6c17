"""HTTPS for `kiln serve`: the user's certificate, or one kiln makes for itself.

Bearer tokens must not cross a network in clear, and the Azure clients refuse plain http anyway,
so `kiln serve` speaks TLS unless told `--insecure-http` on a loopback address. Without
`--tls-cert/--tls-key`, kiln makes a self-signed certificate at its first start and keeps it in the
state home (tls/serve.crt, its key tls/serve.key readable by the owner only). Clients trust that
one file as their CA bundle (REQUESTS_CA_BUNDLE, azure-core's `connection_verify`); `kiln serve
cert` and the start-up line print its path and SHA-256 fingerprint so a user can compare them.

The certificate is its own CA (basicConstraints CA:TRUE, keyCertSign): a client that is given it as
its only trust anchor accepts it, including OpenSSL's strict X.509 checks. It names localhost,
127.0.0.1, ::1, the host name and the address kiln listens on; it is made again, and kiln says so,
when it has expired or does not name the address asked for (clients must then trust the new one).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kiln.errors import InvalidInput

VALID_DAYS = 825  # the longest validity Apple's and browsers' TLS clients accept for a server certificate
RENEW_BEFORE = datetime.timedelta(days=7)


@dataclass(frozen=True)
class ServerCert:
    cert: Path
    key: Path
    fingerprint: str  # SHA-256 of the DER certificate, as `openssl x509 -fingerprint -sha256` prints it
    generated: bool  # kiln's own self-signed certificate (not the user's)
    created_now: bool = False  # made by this call: clients trusted an earlier one, or none


def cert_dir(home: Path) -> Path:
    return home / "tls"


def fingerprint(pem: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    digest = x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def user_cert(cert: Path, key: Path) -> ServerCert:
    """The user's certificate and key, checked now (a clear error rather than a failed handshake later)."""
    for what, path in (("certificate", cert), ("key", key)):
        if not path.is_file():
            raise InvalidInput(f"the TLS {what} {str(path)!r} is not a readable file", file=str(path))
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise InvalidInput(f"the TLS certificate and key cannot be used together: {e}", file=str(cert),
                           hint="give a PEM certificate (chain) and its PEM private key, unencrypted") from None
    try:
        fp = fingerprint(cert.read_bytes())
    except ValueError as e:
        raise InvalidInput(f"the TLS certificate is not PEM: {e}", file=str(cert)) from None
    return ServerCert(cert, key, fp, generated=False)


def names_for(host: str) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses kiln's own certificate names, for a server listening on `host`."""
    dns = ["localhost"]
    ips = ["127.0.0.1", "::1"]
    for name in (socket.gethostname(), host):
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            if name and name not in dns:
                dns.append(name)
            continue
        if not ip.is_unspecified and str(ip) not in ips:  # 0.0.0.0 names no host
            ips.append(str(ip))
    return dns, ips


def own_cert(home: Path, host: str) -> ServerCert:
    """kiln's self-signed certificate in the state home, made (again) if missing, expired or not naming `host`."""
    folder = cert_dir(home)
    cert, key = folder / "serve.crt", folder / "serve.key"
    dns, ips = names_for(host)
    if cert.is_file() and key.is_file() and _still_good(cert.read_bytes(), dns, ips):
        return ServerCert(cert, key, fingerprint(cert.read_bytes()), generated=True)
    cert_pem, key_pem = make_self_signed(dns, ips)
    folder.mkdir(parents=True, exist_ok=True)
    _write(key, key_pem, 0o600)
    _write(cert, cert_pem, 0o644)
    return ServerCert(cert, key, fingerprint(cert_pem), generated=True, created_now=True)


def _still_good(pem: bytes, dns: list[str], ips: list[str]) -> bool:
    from cryptography import x509

    try:
        c = x509.load_pem_x509_certificate(pem)
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    if c.not_valid_after_utc - RENEW_BEFORE < datetime.datetime.now(datetime.UTC):
        return False
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    return set(dns) <= have_dns and set(ips) <= have_ips


def make_self_signed(dns: list[str], ips: list[str]) -> tuple[bytes, bytes]:
    """A P-256 key and a self-signed certificate for these names: (certificate PEM, key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"kiln serve on {socket.gethostname()}"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kiln (self-signed)")])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    san = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a client whose clock is a little behind
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write(path: Path, data: bytes, mode: int) -> None:
    """Atomically, with its mode from the start (a key is never readable by others, even briefly)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600 from the start
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
