"""The catalog's schema, declared once (SQLAlchemy Core) for SQLite and PostgreSQL alike.

A new catalog is made from this metadata and stamped at the newest Alembic revision; an existing
one reaches it through kiln.store.migrations (a change here is always a new migration too). The
tables are exactly the ones the old hand-written list built up to its version 7 (kiln.store.legacy),
so a catalog made by it is stamped at the baseline revision, not rebuilt.

Types: times are seconds since the epoch as floats (double precision on PostgreSQL: a 4-byte
REAL would round today's timestamps to minutes); sizes, pids and counts are 64-bit on PostgreSQL
(a disk's virtual size passes 2 GiB) and SQLite's INTEGER (a rowid alias for `leases.id`); flags
are 0/1 integers, as SQLite has always stored them.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

Int = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Time = sa.Float()


def _text(name: str, *, default: str | None = None, nullable: bool = False, **kw: object) -> sa.Column[str]:
    return sa.Column(name, sa.Text, nullable=nullable,
                     server_default=None if default is None else sa.text(f"'{default}'"), **kw)  # type: ignore[arg-type]


def _flag(name: str) -> sa.Column[int]:
    return sa.Column(name, Int, nullable=False, server_default=sa.text("0"))


def _time(name: str, *, nullable: bool = False) -> sa.Column[float]:
    return sa.Column(name, Time, nullable=nullable)


def _int(name: str, *, nullable: bool = False) -> sa.Column[int]:
    return sa.Column(name, Int, nullable=nullable)


blobs = sa.Table(
    "blobs", metadata,
    _text("digest", primary_key=True), _int("virtual_size"), _int("size"), _time("created"),
)

images = sa.Table(
    "images", metadata,
    _text("key", primary_key=True), _text("id"), _text("location"), _text("os_type"), _text("os_state"),
    _text("hyper_v_generation"), sa.Column("digest", sa.Text, sa.ForeignKey("blobs.digest"), nullable=False),
    _text("tags", default="{}"), _text("source", default=""), _flag("boot_tested"), _time("created"),
    _text("boot_generations", default=""), _text("boot_test", default=""),
)

galleries = sa.Table(
    "galleries", metadata,
    _text("key", primary_key=True), _text("id"), _text("location"), _text("description", default=""), _time("created"),
)

gallery_images = sa.Table(
    "gallery_images", metadata,
    _text("key", primary_key=True), _text("id"),
    sa.Column("gallery_key", sa.Text, sa.ForeignKey("galleries.key"), nullable=False),
    _text("publisher"), _text("offer"), _text("sku"), _text("os_type"), _text("os_state"),
    _text("hyper_v_generation"), _time("created"),
)

gallery_image_versions = sa.Table(
    "gallery_image_versions", metadata,
    _text("key", primary_key=True), _text("id"),
    sa.Column("image_key", sa.Text, sa.ForeignKey("gallery_images.key"), nullable=False),
    _int("major"), _int("minor"), _int("patch"),
    sa.Column("digest", sa.Text, sa.ForeignKey("blobs.digest"), nullable=False),
    _flag("exclude_from_latest"), _text("target_regions", default="[]"), _text("tags", default="{}"),
    _text("source", default=""), _flag("boot_tested"), _time("created"), _text("boot_generations", default=""),
    sa.UniqueConstraint("image_key", "major", "minor", "patch"),
)

replicas = sa.Table(
    "replicas", metadata,
    _text("region", primary_key=True),
    sa.Column("digest", sa.Text, sa.ForeignKey("blobs.digest"), primary_key=True),
    _text("uri"), _text("method"), _time("created"),
)

image_templates = sa.Table(
    "image_templates", metadata,
    _text("key", primary_key=True), _text("id"), _text("template_json"), _time("created"), _time("updated"),
)

runs = sa.Table(
    "runs", metadata,
    _text("run_id", primary_key=True), _text("template_key"), _text("run_state"), _text("run_sub_state"),
    _text("message", default=""), _time("start_time"), _time("end_time", nullable=True), _text("log_path", default=""),
    _int("pid", nullable=True), _text("pid_start", default=""),
    sa.Index("runs_by_template", "template_key", "start_time"),
)

run_outputs = sa.Table(
    "run_outputs", metadata,
    sa.Column("run_id", sa.Text, sa.ForeignKey("runs.run_id"), primary_key=True), _text("name", primary_key=True),
    _text("template_key"), _text("target_type"), _text("artifact_id", default=""), _text("artifact_uri", default=""),
    _text("provisioning_state"), _text("error", default=""), _time("created"), _text("boot_test", default=""),
    sa.Index("run_outputs_by_template", "template_key", "name", "created"),
)

leases = sa.Table(
    "leases", metadata,
    sa.Column("id", Int, primary_key=True, autoincrement=True), _text("digest"), _text("holder"), _int("pid"),
    _text("pid_start"), _time("created"),
    sa.Index("leases_by_digest", "digest"),
)

labs = sa.Table(
    "labs", metadata,
    _text("key", primary_key=True), _text("id"), _text("location"), _time("created"),
)

lab_custom_images = sa.Table(
    "lab_custom_images", metadata,
    _text("key", primary_key=True), _text("id"), sa.Column("lab_key", sa.Text, sa.ForeignKey("labs.key"), nullable=False),
    _text("name"), _text("os_type"), _text("os_state"), _text("description", default=""), _text("author", default=""),
    _text("image_path", default=""), sa.Column("digest", sa.Text, sa.ForeignKey("blobs.digest"), nullable=False),
    _flag("boot_tested"), _text("source", default=""), _text("tags", default="{}"), _time("created"),
    sa.Index("lab_custom_images_by_lab", "lab_key", "image_path", "created"),
)

api_tokens = sa.Table(
    "api_tokens", metadata,
    _text("name", primary_key=True), _text("token_hash", unique=True), _text("subscriptions"), _flag("read_only"),
    _time("created"),
)

api_templates = sa.Table(
    "api_templates", metadata,
    _text("key", primary_key=True), _text("id"), _text("body"), _text("created_by"), _time("created"),
    _text("updated_by"), _time("updated"),
)

api_operations = sa.Table(
    "api_operations", metadata,
    _text("id", primary_key=True), _text("kind"), _text("template_key"), _text("status"), _text("run_id", default=""),
    _text("error", default=""), _time("created"), _time("ended", nullable=True),
    sa.Index("api_operations_by_template", "template_key", "created"),
)

api_triggers = sa.Table(
    "api_triggers", metadata,
    _text("key", primary_key=True), _text("id"), _text("template_key"), _text("kind"), _text("created_by"),
    _time("created"), _text("seen", default=""), _text("status_code"), _text("status_message", default=""),
    _time("status_time"), _text("pending", default=""), _text("last_operation", default=""),
    _text("last_reason", default=""),
    sa.Index("api_triggers_by_template", "template_key"),
)

vms = sa.Table(
    "vms", metadata,
    _text("key", primary_key=True), _text("id"), _text("name"), _text("lab_key", default=""), _text("image_id"),
    _text("image_key"), sa.Column("digest", sa.Text, sa.ForeignKey("blobs.digest"), nullable=False),
    _text("os_type"), _text("hyper_v_generation"), _text("admin_username"), _text("public_key"), _text("key_path"),
    _int("ssh_port"), _int("cpus"), _int("memory_mib"), _int("disk_size"), _text("dir"), _int("pid", nullable=True),
    _text("pid_start", default=""), _time("created"),
    sa.Index("vms_by_name", "name"),
    sa.Index("vms_by_digest", "digest"),
)
