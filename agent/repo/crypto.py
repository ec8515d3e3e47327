"""Encryption of a format 2 repository: the master key, the keys that wrap it, and sealing objects.

Everything cryptographic comes from PyCA ``cryptography`` (AES-256-GCM, Argon2id) and ``blake3`` (keyed
hashing); Ferry only chooses and combines them (docs/FORMAT.md, section 9):

- **Master key**: 64 random bytes made once at ``repo init``: 32 for AES-256-GCM (``data``), 32 for the
  keyed BLAKE3 of chunk IDs (``chunkId``), so IDs and pack layout reveal nothing about plain content
  beyond sizes.
- **Sealing** an object: ``nonce (12 random bytes) ‖ AES-256-GCM(data key, nonce, plain, aad)``; 28 bytes
  more than the plain (``SEAL_OVERHEAD``). The associated data binds the sealed bytes to where they belong
  (a chunk to its ID, a manifest to its version line and the repository), so bytes moved elsewhere do not
  authenticate. Random 96-bit nonces keep the chance of a repeated nonce below 2⁻³² for 2³² objects
  under one key (NIST SP 800-38D, 8.3): a repository of 4 MiB chunks reaches that at 16 PiB.
- **Keys** (one per password): the master key sealed with a key derived from the password by Argon2id
  (RFC 9106; 64 MiB, 3 passes, 4 lanes by default: its second recommended option), with the repository ID
  as associated data. A password is added or removed by adding or deleting a key object: data is never
  re-encrypted.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import threading
from dataclasses import dataclass
from typing import Any

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from agent.errors import RepositoryError, WrongPassword

ENCRYPTION = "aes-256-gcm"
"""The one cipher format 2 names in its config (``none``: an unencrypted repository)."""
NONCE_BYTES = 12
TAG_BYTES = 16
SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES
"""Bytes a sealed object has beyond its plain bytes."""

KEY_AAD = b"ferry-key\n"


@dataclass(frozen=True)
class KdfParams:
    """Argon2id's cost, as stored in a key object. Defaults: RFC 9106 section 4, second option."""

    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 4

    def check(self) -> None:
        """Refuse costs a key object could use to exhaust the machine (or that are too weak to mean
        anything). Raises RepositoryError."""
        if not (8 * 1024 <= self.memory_kib <= 1024 * 1024 and 1 <= self.iterations <= 16 and 1 <= self.lanes <= 16):
            raise RepositoryError(
                f"a key asks for Argon2id with {self.memory_kib} KiB, {self.iterations} passes and {self.lanes} "
                "lanes: outside what Ferry accepts (8 MiB to 1 GiB, 1 to 16 passes, 1 to 16 lanes)"
            )


_DERIVING = threading.Lock()
"""One key derivation at a time per process. Two Argon2id derivations with more than one lane at once,
in two threads, never return with cryptography 50 (OpenSSL's Argon2 thread pool; found by the agent
opening repositories for two transfers at once, and reproduced with two bare ``derive`` calls). It also
bounds the memory derivations take to one at a time, as MinIO does (madmin-go #313)."""


def derive(password: bytes, salt: bytes, params: KdfParams) -> bytes:
    """The 32-byte key a password gives with ``salt`` and ``params`` (blocking: about 0.15 s and 64 MiB
    with the defaults; derivations in other threads wait their turn)."""
    kdf = Argon2id(
        salt=salt, length=32, iterations=params.iterations, lanes=params.lanes, memory_cost=params.memory_kib
    )
    with _DERIVING:
        return kdf.derive(password)


class Sealer:
    """AES-256-GCM with random nonces under one key. Thread-safe."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plain: bytes | bytearray | memoryview, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plain, aad)

    def open(self, sealed: bytes | bytearray | memoryview, aad: bytes) -> bytes | None:
        """The plain bytes, or None if ``sealed`` does not authenticate with this key and ``aad``."""
        if len(sealed) < SEAL_OVERHEAD:
            return None
        view = memoryview(sealed)
        try:
            return self._aead.decrypt(view[:NONCE_BYTES], view[NONCE_BYTES:], aad)
        except InvalidTag:
            return None


@dataclass(frozen=True)
class MasterKey:
    """A repository's keys once unlocked. ``repository_id``: the config's ID, which every key object and
    manifest is bound to."""

    repository_id: str
    data: bytes
    chunk_id_key: bytes

    @classmethod
    def new(cls, repository_id: str) -> MasterKey:
        return cls(repository_id, secrets.token_bytes(32), secrets.token_bytes(32))

    def sealer(self) -> Sealer:
        return Sealer(self.data)

    def chunk_id(self, data: bytes | bytearray | memoryview) -> bytes:
        """Keyed BLAKE3-256 of a chunk's plain bytes."""
        return blake3.blake3(data, key=self.chunk_id_key, max_threads=1).digest()

    def payload(self) -> bytes:
        return json.dumps(
            {
                "repository": self.repository_id,
                "data": base64.b64encode(self.data).decode(),
                "chunkId": base64.b64encode(self.chunk_id_key).decode(),
            }
        ).encode()


def _b64(value: Any, what: str, length: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise RepositoryError(f"{what} is not base64") from None
    if length is not None and len(raw) != length:
        raise RepositoryError(f"{what} holds {len(raw)} bytes, not {length}")
    return raw


def seal_key(master: MasterKey, password: bytes, params: KdfParams, created: str, host: str) -> bytes:
    """A key object: ``master`` sealed under a key derived from ``password`` (blocking: runs the KDF)."""
    salt = secrets.token_bytes(16)
    wrapped = Sealer(derive(password, salt, params)).seal(master.payload(), KEY_AAD + master.repository_id.encode())
    body = {
        "kdf": {
            "algorithm": "argon2id",
            "memoryKiB": params.memory_kib,
            "iterations": params.iterations,
            "lanes": params.lanes,
            "salt": base64.b64encode(salt).decode(),
        },
        "sealed": base64.b64encode(wrapped).decode(),
        "created": created,
        "host": host,
    }
    return json.dumps(body, indent=1).encode() + b"\n"


@dataclass(frozen=True)
class KeyObject:
    """A parsed key object (nothing unlocked yet)."""

    params: KdfParams
    salt: bytes
    sealed: bytes
    created: str
    host: str


MAX_KEY_OBJECT_BYTES = 64 * 1024


def parse_key(stored: bytes, what: str) -> KeyObject:
    """Parse a key object; raises RepositoryError naming ``what`` when it is not one."""
    try:
        body = json.loads(stored)
        kdf = body["kdf"]
        if kdf["algorithm"] != "argon2id":
            raise RepositoryError(f"{what} uses the key derivation {kdf['algorithm']!r}, which Ferry does not know")
        params = KdfParams(int(kdf["memoryKiB"]), int(kdf["iterations"]), int(kdf["lanes"]))
        salt = _b64(kdf["salt"], f"the salt of {what}")
        sealed = _b64(body["sealed"], f"the sealed key of {what}")
        created, host = str(body.get("created", "")), str(body.get("host", ""))
    except (ValueError, KeyError, TypeError) as e:
        raise RepositoryError(f"{what} is not a Ferry key object ({type(e).__name__}: {e})") from None
    params.check()
    if not 8 <= len(salt) <= 64:
        raise RepositoryError(f"{what} has a salt of {len(salt)} bytes (8 to 64 expected)")
    return KeyObject(params, salt, sealed, created, host)


def unlock(key: KeyObject, password: bytes, repository_id: str, what: str) -> MasterKey | None:
    """The master key ``key`` seals, if ``password`` opens it (None otherwise; blocking: runs the KDF).
    Raises RepositoryError when it opens but does not hold a master key of this repository."""
    plain = Sealer(derive(password, key.salt, key.params)).open(key.sealed, KEY_AAD + repository_id.encode())
    if plain is None:
        return None
    try:
        body = json.loads(plain)
        found = str(body["repository"])
        data = _b64(body["data"], f"the data key in {what}", 32)
        chunk = _b64(body["chunkId"], f"the chunk ID key in {what}", 32)
    except (ValueError, KeyError, TypeError) as e:  # pragma: no cover - authenticated, so written by a Ferry
        raise RepositoryError(f"{what} opens but holds no master key ({type(e).__name__})") from None
    if found != repository_id:  # pragma: no cover - the associated data already binds it
        raise RepositoryError(f"{what} belongs to repository {found}, not {repository_id}")
    return MasterKey(repository_id, data, chunk)


def wrong_password(where: str, tried: int, keys: int) -> WrongPassword:
    which = f"any of the {keys} key(s)" if tried == keys else f"any of the {tried} keys tried (of {keys})"
    return WrongPassword(
        f"the password does not open {which} of the repository at {where}: wrong password "
        "(--password-file / FERRY_PASSWORD_FILE), or the repository's config was altered"
    )
