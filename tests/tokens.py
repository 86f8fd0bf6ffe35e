"""Keys and tokens for the tests, made with libraries meshward does not use (cryptography,
PyJWT, jwcrypto), so the filter is checked against what real issuers produce."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt  # PyJWT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwcrypto import jwk

ISSUER = "https://issuer.test"
AUDIENCE = "orders-api"

ALGORITHMS = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class KeyRing:
    """One signing key per algorithm family, with its public JWK (kid = family name)."""

    def __init__(self, suffix: str = ""):
        self.hmac_secret = hashlib.sha512(f"meshward-test-secret{suffix}{time.time()}".encode()).digest()
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.p256 = ec.generate_private_key(ec.SECP256R1())
        self.p384 = ec.generate_private_key(ec.SECP384R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.suffix = suffix

    def kid(self, alg: str) -> str:
        family = {"HS": "hs", "RS": "rsa", "PS": "rsa", "ES": "es" + alg[2:], "Ed": "ed"}[alg[:2]]
        return family + self.suffix

    def signing_key(self, alg: str):
        return {"HS": self.hmac_secret, "RS": self.rsa, "PS": self.rsa, "ES": self.p256 if alg == "ES256" else self.p384, "Ed": self.ed}[alg[:2]]

    def jwks(self, families=("hs", "rsa", "es256", "es384", "ed")) -> dict:
        keys = []
        for family in families:
            if family == "hs":
                k = jwk.JWK(kty="oct", k=b64url(self.hmac_secret))
                d = json.loads(k.export(private_key=True))
            else:
                pub = {"rsa": self.rsa, "es256": self.p256, "es384": self.p384, "ed": self.ed}[family].public_key()
                d = jwk.JWK.from_pyca(pub).export_public(as_dict=True)
            d["kid"] = family + self.suffix
            keys.append(d)
        return {"keys": keys}

    def rsa_public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def token(self, alg: str = "RS256", kid: str | None = "default", headers: dict | None = None, **claims) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 300, "iat": now, "tenant": "acme"}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        h = dict(headers or {})
        if kid == "default":
            kid = self.kid(alg)
        if kid is not None:
            h["kid"] = kid
        return jwt.encode(payload, self.signing_key(alg), algorithm=alg, headers=h)


def forge_hs256(secret: bytes, header: dict, payload: dict) -> str:
    """A hand-made HS256 token (PyJWT refuses to use a public key as an HMAC secret)."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


def unsigned(payload: dict, alg: str = "none") -> str:
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return header + "." + b64url(json.dumps(payload).encode()) + "."


def bearer(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}
