"""A repository's identity: its config object, its keys, and opening or creating it.

    ferry-repository     the config (docs/FORMAT.md, section 1): format, ID, encryption, chunker
    keys/<key id>        one object per password, each sealing the master key (``agent.repo.crypto``)

A location without a config is one of: a format 1 Ferry repository (it has ``snapshots/`` or ``packs/``;
read as it is, written to only once ``repo init --no-encryption`` upgrades it in place), another tool's
repository (restic's ``config`` and ``keys/``, kopia's ``kopia.repository.f``), or nothing Ferry knows:
every command but ``repo init`` then fails with ``NoRepository`` saying so.

Creating a repository is safe against another writer creating it at the same time (two agents backing up
the first volumes of a namespace): the key is stored first, then the config with a conditional write;
the writer that loses deletes its key and opens the winner's repository.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import blake3

from agent.aio.threads import offload
from agent.errors import (
    ConfigError,
    LocationMissing,
    NoRepository,
    ObjectNotFound,
    RepositoryError,
    StorageError,
    UnsupportedFormat,
    WrongPassword,
)
from agent.repo.crypto import (
    ENCRYPTION,
    MAX_KEY_OBJECT_BYTES,
    KdfParams,
    KeyObject,
    MasterKey,
    parse_key,
    seal_key,
    unlock,
    wrong_password,
)
from agent.repo.repository import PACKS, SNAPSHOTS, Repository
from agent.settings import RepositorySettings, SnapshotSettings
from agent.storage.base import Storage

log = logging.getLogger(__name__)

CONFIG = "ferry-repository"
KEYS = "keys/"
FORMAT = 2
"""The repository format this Ferry writes (config present). Format 1 had no config."""
NONE = "none"
MAX_CONFIG_BYTES = 64 * 1024
MAX_KEYS = 64
"""Key objects tried at most when unlocking (each costs one key derivation)."""


@dataclass(frozen=True)
class RepoConfig:
    """The config object. ``chunker``: how files are cut (FastCDC 2020 sizes in bytes), so that every
    writer cuts alike and deduplicates against the others."""

    id: str
    encryption: str
    created: str
    chunker: dict[str, int] = field(default_factory=dict)
    format: int = FORMAT

    @property
    def encrypted(self) -> bool:
        return self.encryption != NONE

    def encode(self) -> bytes:
        body = {
            "ferryRepository": self.format,
            "id": self.id,
            "encryption": self.encryption,
            "chunker": {"algorithm": "fastcdc2020", **self.chunker},
            "created": self.created,
        }
        return json.dumps(body, indent=1).encode() + b"\n"


def _chunker(settings: SnapshotSettings) -> dict[str, int]:
    return {"minSize": settings.cdc_min_bytes, "avgSize": settings.cdc_avg_bytes, "maxSize": settings.cdc_max_bytes}


def parse_config(stored: bytes, where: str) -> RepoConfig:
    """Parse a config object. Raises UnsupportedFormat for a newer format, NoRepository for an object
    that is not a Ferry config (restic keeps a ``config`` of its own: ours has another name)."""
    try:
        body = json.loads(stored)
        version = body["ferryRepository"]
    except (ValueError, KeyError, TypeError):
        raise NoRepository(
            f"{where}/{CONFIG} is not a Ferry repository config: the location holds something else"
        ) from None
    if not isinstance(version, int) or version < FORMAT:
        raise RepositoryError(f"the config at {where} names format {version!r}, which no Ferry wrote")
    if version > FORMAT:
        raise UnsupportedFormat(
            f"the repository at {where} is in format {version}; this Ferry knows format {FORMAT}: upgrade Ferry"
        )
    try:
        config = RepoConfig(
            id=str(body["id"]),
            encryption=str(body["encryption"]),
            created=str(body.get("created", "")),
            chunker={k: int(v) for k, v in body.get("chunker", {}).items() if k != "algorithm"},
        )
        algorithm = body.get("chunker", {}).get("algorithm", "fastcdc2020")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise RepositoryError(f"the config at {where} is malformed ({type(e).__name__}: {e})") from None
    if len(config.id) != 64 or set(config.id) - set("0123456789abcdef"):
        raise RepositoryError(f"the config at {where} has the ID {config.id!r}, not 64 hexadecimal digits")
    if config.encryption not in (ENCRYPTION, NONE):
        raise UnsupportedFormat(f"the repository at {where} is encrypted with {config.encryption!r}: upgrade Ferry")
    if algorithm != "fastcdc2020":
        raise UnsupportedFormat(f"the repository at {where} cuts files with {algorithm!r}: upgrade Ferry")
    sizes = [config.chunker.get(k, 0) for k in ("minSize", "avgSize", "maxSize")]
    if config.chunker and not (
        64 * 1024 <= sizes[0] <= sizes[1] <= sizes[2] <= 16 * 1024 * 1024 and not sizes[1] & (sizes[1] - 1)
    ):
        raise RepositoryError(
            f"the config at {where} gives chunker sizes {sizes} that Ferry cannot use (64 KiB <= min <= avg <= max "
            "<= 16 MiB, avg a power of two): the config was altered"
        )
    return config


async def _exists(storage: Storage, key: str) -> bool:
    return bool(await storage.list(key))


async def describe_location(storage: Storage) -> str:
    """What is at a location that has no Ferry config: ``ferry1``, ``restic``, ``kopia``, ``headless``
    (an encrypted Ferry repository that lost its config: keys and data), ``other`` (objects Ferry does
    not know) or ``empty``. Raises LocationMissing, StorageError."""
    await storage.check()
    if await storage.is_empty():
        return "empty"
    if await _exists(storage, "kopia.repository"):
        return "kopia"
    if await _exists(storage, "config") and await _exists(storage, "keys/"):
        return "restic"
    data = await _exists(storage, SNAPSHOTS) or await _exists(storage, PACKS)
    if await _exists(storage, KEYS):
        # Keys and data without a config: the config was lost (format 1 never had keys). Keys alone: a
        # repository being created by another writer (its config comes next).
        return "headless" if data else "empty"
    return "ferry1" if data else "other"


def _absent(where: str, what: str, creating: bool = False) -> NoRepository:
    if what == "headless":
        return NoRepository(
            f"{where} holds an encrypted Ferry repository whose config object ({CONFIG}) is missing: nothing in it "
            f"can be opened without it (the keys are bound to the repository ID it holds); put back a copy of "
            f"{CONFIG} from a backup of the bucket. Do not run `ferry repo init` there: a new config cannot open "
            "the data"
        )
    if what == "other":
        if creating:
            return NoRepository(
                f"{where} holds objects that are not a Ferry repository's: a repository is created at an empty (or "
                "new) location"
            )
        return NoRepository(f"no Ferry repository at {where}: it holds other objects")
    if what == "restic":
        return NoRepository(f"{where} holds a restic repository, not a Ferry one: use restic for it")
    if what == "kopia":
        return NoRepository(f"{where} holds a kopia repository, not a Ferry one: use kopia for it")
    return NoRepository(f"no Ferry repository at {where}; `ferry repo init` creates one")


async def read_config(storage: Storage) -> RepoConfig | None:
    """The config, or None if there is none. Raises NoRepository, UnsupportedFormat, RepositoryError and
    storage errors."""
    try:
        stored = await storage.get(CONFIG, max_bytes=MAX_CONFIG_BYTES)
    except ObjectNotFound:
        return None
    return parse_config(stored, storage.describe())


async def _key_objects(storage: Storage) -> dict[str, KeyObject]:
    """The parseable key objects by ID (their file name); unparseable ones are skipped with a warning."""
    keys = await storage.list(KEYS)
    found: dict[str, KeyObject] = {}
    for key in keys[: MAX_KEYS * 2]:
        key_id = key[len(KEYS) :]
        try:
            stored = await storage.get(key, max_bytes=MAX_KEY_OBJECT_BYTES)
            if _key_id(stored) != key_id:
                raise RepositoryError("its name is not the hash of its content (a copy, or altered)")
            found[key_id] = parse_key(stored, f"key {key_id}")
        except (RepositoryError, ObjectNotFound, StorageError) as e:
            log.warning("key %s of %s is not used: %s", key_id[:16], storage.describe(), e)
    return found


async def _unlock(storage: Storage, config: RepoConfig, password: bytes) -> tuple[MasterKey, str]:
    where = storage.describe()
    keys = await _key_objects(storage)
    if not keys:
        raise RepositoryError(f"the encrypted repository at {where} has no key that can be read: it cannot be opened")
    # The cheapest first: a key object asking for a costly derivation (written by someone who can write to
    # the bucket) does not hold up the others.
    order = sorted(keys.items(), key=lambda kv: (kv[1].params.memory_kib * kv[1].params.iterations, kv[0]))
    tried = order[:MAX_KEYS]
    for key_id, key in tried:
        master = await offload(partial(_try_key, key, password, config.id, key_id))
        if master is not None:
            return master, key_id
    raise wrong_password(where, len(tried), len(keys))


def _try_key(key: KeyObject, password: bytes, repository_id: str, key_id: str, stop: object) -> MasterKey | None:
    return unlock(key, password, repository_id, f"key {key_id}")


async def open_repository(
    storage: Storage,
    settings: RepositorySettings | None,
    password: bytes | None,
    *,
    write: bool = False,
) -> Repository:
    """The repository at ``storage``, unlocked with ``password`` if it is encrypted.

    ``write``: the caller will add or remove objects; a format 1 repository is then refused (it is
    read-only until upgraded), and so is an unencrypted one when a password was given (the password means
    the caller expects its data encrypted; a config replaced by an unencrypted one must not make it write
    in the clear). Raises NoRepository (nothing, or another tool's repository, at the location),
    ConfigError (no password for an encrypted repository, a password for an unencrypted one to write to),
    WrongPassword, UnsupportedFormat, RepositoryError and storage errors."""
    where = storage.describe()
    try:
        config = await read_config(storage)
        if config is None:
            what = await describe_location(storage)
    except LocationMissing as e:
        raise NoRepository(
            f"no Ferry repository at {where}: the directory does not exist; `ferry repo init` creates one"
        ) from e
    if config is None:
        if what != "ferry1":
            raise _absent(where, what)
        if write:
            raise NoRepository(
                f"{where} holds a format 1 Ferry repository, which this Ferry reads but does not write to: "
                "`ferry repo init --no-encryption` upgrades it in place (its snapshots stay as they are, "
                "unencrypted, and older Ferry still reads them)"
            )
        log.info("%s is a format 1 repository (no config): read as it is", where)
        return Repository(storage, settings)
    if not config.encrypted:
        if password is not None:
            if write:
                raise ConfigError(
                    f"the repository at {where} is not encrypted, but a password was given: Ferry does not write "
                    "unencrypted data where encrypted data is expected; give no password to write to it"
                )
            log.warning("the repository at %s is not encrypted: the password given is not used", where)
        return Repository(storage, settings, config=config)
    if password is None:
        raise ConfigError(
            f"the repository at {where} is encrypted: give its password (--password-file or FERRY_PASSWORD_FILE)"
        )
    master, key_id = await _unlock(storage, config, password)
    return Repository(storage, settings, config=config, master=master, key_id=key_id)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _key_id(stored: bytes) -> str:
    return blake3.blake3(stored).hexdigest()


async def _store_key(storage: Storage, master: MasterKey, password: bytes, kdf: KdfParams) -> str:
    stored = await offload(partial(_seal, master, password, kdf))
    key_id = _key_id(stored)
    await storage.put(KEYS + key_id, stored)
    return key_id


def _seal(master: MasterKey, password: bytes, kdf: KdfParams, stop: object) -> bytes:
    return seal_key(master, password, kdf, _now(), socket.gethostname())


@dataclass(frozen=True)
class Created:
    """What ``init_repository`` did: ``repository`` is open (unlocked); ``upgraded``: a format 1
    repository got a config; ``created`` False: another writer created the repository first and
    ``repository`` is theirs, opened with the same password."""

    repository: Repository
    created: bool
    upgraded: bool = False


async def init_repository(
    storage: Storage,
    settings: RepositorySettings | None,
    password: bytes | None,
    *,
    kdf: KdfParams | None = None,
    snapshot: SnapshotSettings | None = None,
) -> Created:
    """Create a repository at ``storage``: encrypted with ``password``, or unencrypted if it is None
    (which callers allow only when asked explicitly). A format 1 repository there is upgraded in place,
    unencrypted only (its data cannot be encrypted without rewriting it). Raises ConfigError (a
    repository is there already; a password for a format 1 repository), NoRepository (another tool's
    repository is there), and storage errors."""
    where = storage.describe()
    existing = await read_config(storage)
    if existing is not None:
        raise ConfigError(f"there is already a Ferry repository at {where} (ID {existing.id[:16]})")
    try:
        what = await describe_location(storage)
    except LocationMissing:
        what = "empty"
    if what in ("restic", "kopia", "headless", "other"):
        raise _absent(where, what, creating=True)
    if what == "ferry1" and password is not None:
        raise ConfigError(
            f"{where} holds a format 1 Ferry repository, whose snapshots are not encrypted and cannot be encrypted "
            "in place: `ferry repo init --no-encryption` upgrades it as it is; for encryption, create a repository "
            "at another location"
        )
    config = RepoConfig(
        id=secrets.token_hex(32),
        encryption=ENCRYPTION if password is not None else NONE,
        created=_now(),
        chunker=_chunker(snapshot or SnapshotSettings()),
    )
    master = MasterKey.new(config.id) if password is not None else None
    key_id = ""
    if master is not None and password is not None:
        key_id = await _store_key(storage, master, password, kdf or KdfParams())
    try:
        won = await storage.put_new(CONFIG, config.encode())
    except BaseException:
        if key_id:
            await storage.delete(KEYS + key_id)
        raise
    if not won:
        if key_id:
            await storage.delete(KEYS + key_id)
        log.info("another writer created the repository at %s first: using theirs", where)
        try:
            return Created(await open_repository(storage, settings, password), created=False)
        except WrongPassword:
            raise ConfigError(
                f"another writer created the repository at {where} at the same moment, with another password: "
                "give that one"
            ) from None
    log.info("created %s repository %s at %s", config.encryption, config.id[:16], where)
    repo = Repository(storage, settings, config=config, master=master, key_id=key_id)
    return Created(repo, created=True, upgraded=what == "ferry1")


async def open_or_init(
    storage: Storage, settings: RepositorySettings | None, password: bytes | None, *, kdf: KdfParams | None = None
) -> Created:
    """Open the repository to write to it, creating it first (encrypted with ``password``) if the location
    holds nothing. Without a password an empty location is not made into an unencrypted repository
    (``NoRepository``: that must be asked for with ``repo init --no-encryption``). Raises as
    ``open_repository`` and ``init_repository``."""
    try:
        return Created(await open_repository(storage, settings, password, write=True), created=False)
    except NoRepository:
        if password is None:
            raise
        if await read_config(storage) is None:  # else another writer created it meanwhile: open theirs
            try:
                what = await describe_location(storage)
            except LocationMissing:
                what = "empty"
            if what != "empty":
                raise
            try:
                return await init_repository(storage, settings, password, kdf=kdf)
            except ConfigError:
                if await read_config(storage) is None:
                    raise
    return Created(await open_repository(storage, settings, password, write=True), created=False)


@dataclass(frozen=True)
class KeyInfo:
    id: str
    created: str
    host: str
    current: bool
    """The key this process unlocked the repository with."""


async def list_keys(repo: Repository) -> list[KeyInfo]:
    """The repository's keys (an encrypted repository's passwords), oldest first. Raises ConfigError for
    an unencrypted repository."""
    _require_master(repo)
    keys = await _key_objects(repo.storage)
    found = [KeyInfo(k, v.created, v.host, k == repo.key_id) for k, v in keys.items()]
    return sorted(found, key=lambda k: (k.created, k.id))


def _require_master(repo: Repository) -> MasterKey:
    if repo.master is None:
        raise ConfigError(f"the repository at {repo.describe()} is not encrypted: it has no passwords")
    return repo.master


async def add_key(repo: Repository, password: bytes, kdf: KdfParams | None = None) -> str:
    """Add a password: a new key object sealing the same master key (no data is re-encrypted). Returns
    its ID. Raises ConfigError for an unencrypted repository or one that has ``MAX_KEYS`` keys already
    (more would not all be tried when opening it), and storage errors."""
    master = _require_master(repo)
    existing = await repo.storage.list(KEYS)
    if len(existing) >= MAX_KEYS:
        raise ConfigError(
            f"the repository at {repo.describe()} has {len(existing)} keys: at most {MAX_KEYS} are tried when it is "
            "opened, so no more can be added; remove some first (`ferry repo key remove`)"
        )
    return await _store_key(repo.storage, master, password, kdf or KdfParams())


async def remove_key(repo: Repository, prefix: str) -> str:
    """Remove the key whose ID starts with ``prefix`` (at least 4 hex digits). Refuses the key this
    process unlocked with (open with another password to remove it; so the last one can never go).
    Returns the whole ID. Raises ConfigError, and storage errors."""
    prefix = prefix.strip().lower()
    keys = await list_keys(repo)
    listed = ", ".join(k.id[:8] for k in keys)
    if len(prefix) < 4 or set(prefix) - set("0123456789abcdef"):
        raise ConfigError(f"{prefix!r} is not a key ID: give at least 4 hexadecimal digits of one of: {listed}")
    found = [k for k in keys if k.id.startswith(prefix)]
    if not found:
        raise ConfigError(f"no key of the repository at {repo.describe()} starts with {prefix} (its keys: {listed})")
    if len(found) > 1:
        raise ConfigError(f"{prefix} is the prefix of {len(found)} keys ({listed}): give more digits")
    if found[0].current:
        raise ConfigError(
            f"key {found[0].id[:8]} is the one the password given opens: to remove it, give another password of "
            "the repository"
        )
    await repo.storage.delete(KEYS + found[0].id)
    return found[0].id


def require_writable(repo: Repository) -> None:
    """Raise NoRepository if ``repo`` was opened from a format 1 location (read only until upgraded)."""
    if repo.config is None:
        raise NoRepository(f"{repo.describe()} has no Ferry config: `ferry repo init` creates or upgrades it")


def summary(repo: Repository) -> dict[str, Any]:
    """The repository's identity, for ``repo init`` and ``--json``."""
    c = repo.config
    if c is None:
        return {"location": repo.describe(), "format": 1, "encryption": NONE}
    return {"location": repo.describe(), "format": c.format, "id": c.id, "encryption": c.encryption}
