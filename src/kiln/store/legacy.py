"""The catalog's schema as kiln built it before SQLAlchemy: an append-only list of SQLite
statements, `PRAGMA user_version` saying how many had been applied. Frozen: the schema now lives in
kiln.store.schema and changes through kiln.store.migrations.

Kept for one job: a catalog made by an older kiln (user_version 1 to 7) is brought to version 7
with the rest of this list, then stamped at the Alembic baseline, in place, with its rows intact
(kiln.store.db.open_catalog). Tests also use it to make such a catalog.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[str, ...]] = [
    # 1: blobs, managed images, galleries, regions' replicas, templates, runs, run outputs, leases.
    (
        """CREATE TABLE blobs (
            digest TEXT PRIMARY KEY,
            virtual_size INTEGER NOT NULL,
            size INTEGER NOT NULL,
            created REAL NOT NULL)""",
        """CREATE TABLE images (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            location TEXT NOT NULL,
            os_type TEXT NOT NULL,
            os_state TEXT NOT NULL,
            hyper_v_generation TEXT NOT NULL,
            digest TEXT NOT NULL REFERENCES blobs(digest),
            tags TEXT NOT NULL DEFAULT '{}',
            source TEXT NOT NULL DEFAULT '',
            boot_tested INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL)""",
        """CREATE TABLE galleries (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            location TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL)""",
        """CREATE TABLE gallery_images (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            gallery_key TEXT NOT NULL REFERENCES galleries(key),
            publisher TEXT NOT NULL,
            offer TEXT NOT NULL,
            sku TEXT NOT NULL,
            os_type TEXT NOT NULL,
            os_state TEXT NOT NULL,
            hyper_v_generation TEXT NOT NULL,
            created REAL NOT NULL)""",
        """CREATE TABLE gallery_image_versions (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            image_key TEXT NOT NULL REFERENCES gallery_images(key),
            major INTEGER NOT NULL,
            minor INTEGER NOT NULL,
            patch INTEGER NOT NULL,
            digest TEXT NOT NULL REFERENCES blobs(digest),
            exclude_from_latest INTEGER NOT NULL DEFAULT 0,
            target_regions TEXT NOT NULL DEFAULT '[]',
            tags TEXT NOT NULL DEFAULT '{}',
            source TEXT NOT NULL DEFAULT '',
            boot_tested INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL,
            UNIQUE (image_key, major, minor, patch))""",
        """CREATE TABLE replicas (
            region TEXT NOT NULL,
            digest TEXT NOT NULL REFERENCES blobs(digest),
            uri TEXT NOT NULL,
            method TEXT NOT NULL,
            created REAL NOT NULL,
            PRIMARY KEY (region, digest))""",
        """CREATE TABLE image_templates (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            template_json TEXT NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL)""",
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            template_key TEXT NOT NULL,
            run_state TEXT NOT NULL,
            run_sub_state TEXT NOT NULL,
            message TEXT NOT NULL DEFAULT '',
            start_time REAL NOT NULL,
            end_time REAL,
            log_path TEXT NOT NULL DEFAULT '',
            pid INTEGER,
            pid_start TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX runs_by_template ON runs (template_key, start_time)",
        """CREATE TABLE run_outputs (
            run_id TEXT NOT NULL REFERENCES runs(run_id),
            name TEXT NOT NULL,
            template_key TEXT NOT NULL,
            target_type TEXT NOT NULL,
            artifact_id TEXT NOT NULL DEFAULT '',
            artifact_uri TEXT NOT NULL DEFAULT '',
            provisioning_state TEXT NOT NULL,
            error TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            PRIMARY KEY (run_id, name))""",
        "CREATE INDEX run_outputs_by_template ON run_outputs (template_key, name, created)",
        """CREATE TABLE leases (
            id INTEGER PRIMARY KEY,
            digest TEXT NOT NULL,
            holder TEXT NOT NULL,
            pid INTEGER NOT NULL,
            pid_start TEXT NOT NULL,
            created REAL NOT NULL)""",
        "CREATE INDEX leases_by_digest ON leases (digest)",
    ),
    # 2: DevTest Labs: labs (in a region) and their custom images (kiln.store.labs).
    (
        """CREATE TABLE labs (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            location TEXT NOT NULL,
            created REAL NOT NULL)""",
        """CREATE TABLE lab_custom_images (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            lab_key TEXT NOT NULL REFERENCES labs(key),
            name TEXT NOT NULL,
            os_type TEXT NOT NULL,
            os_state TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            author TEXT NOT NULL DEFAULT '',
            image_path TEXT NOT NULL DEFAULT '',
            digest TEXT NOT NULL REFERENCES blobs(digest),
            boot_tested INTEGER NOT NULL DEFAULT 0,
            source TEXT NOT NULL DEFAULT '',
            tags TEXT NOT NULL DEFAULT '{}',
            created REAL NOT NULL)""",
        "CREATE INDEX lab_custom_images_by_lab ON lab_custom_images (lab_key, image_path, created)",
    ),
    # 3: the REST API (kiln serve): its access tokens (hashed; kiln.store.tokens), the image
    # template resources it was given and its long-running operations (kiln.api.resources).
    (
        """CREATE TABLE api_tokens (
            name TEXT PRIMARY KEY,
            token_hash TEXT NOT NULL UNIQUE,
            subscriptions TEXT NOT NULL,
            read_only INTEGER NOT NULL DEFAULT 0,
            created REAL NOT NULL)""",
        """CREATE TABLE api_templates (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            body TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created REAL NOT NULL,
            updated_by TEXT NOT NULL,
            updated REAL NOT NULL)""",
        """CREATE TABLE api_operations (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            template_key TEXT NOT NULL,
            status TEXT NOT NULL,
            run_id TEXT NOT NULL DEFAULT '',
            error TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            ended REAL)""",
        "CREATE INDEX api_operations_by_template ON api_operations (template_key, created)",
    ),
    # 4: AIB triggers of API image templates (kiln.store.triggers): what each last saw of its
    # template's source, its status, and a run it asked for that no server has started yet.
    (
        """CREATE TABLE api_triggers (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            template_key TEXT NOT NULL,
            kind TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created REAL NOT NULL,
            seen TEXT NOT NULL DEFAULT '',
            status_code TEXT NOT NULL,
            status_message TEXT NOT NULL DEFAULT '',
            status_time REAL NOT NULL,
            pending TEXT NOT NULL DEFAULT '',
            last_operation TEXT NOT NULL DEFAULT '',
            last_reason TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX api_triggers_by_template ON api_triggers (template_key)",
    ),
    # 5: which Hyper-V generations an image's or version's disk boots, read from the disk when it
    # was published ("V1,V2" for kiln's hybrid disks; '' for rows made before this: unknown).
    (
        "ALTER TABLE images ADD COLUMN boot_generations TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE gallery_image_versions ADD COLUMN boot_generations TEXT NOT NULL DEFAULT ''",
    ),
    # 6: which boot test proved a built image (ssh-login | serial; '' when none ran), on the image
    # and on the run output that made it (kiln.validate.choose).
    (
        "ALTER TABLE images ADD COLUMN boot_test TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE run_outputs ADD COLUMN boot_test TEXT NOT NULL DEFAULT ''",
    ),
    # 7: virtual machines made from stored images (kiln.store.vms): each one's disk is an overlay
    # on its image's blob, so the blob stays while the VM does (kiln.store.maintenance keeps it).
    (
        """CREATE TABLE vms (
            key TEXT PRIMARY KEY,
            id TEXT NOT NULL,
            name TEXT NOT NULL,
            lab_key TEXT NOT NULL DEFAULT '',
            image_id TEXT NOT NULL,
            image_key TEXT NOT NULL,
            digest TEXT NOT NULL REFERENCES blobs(digest),
            os_type TEXT NOT NULL,
            hyper_v_generation TEXT NOT NULL,
            admin_username TEXT NOT NULL,
            public_key TEXT NOT NULL,
            key_path TEXT NOT NULL,
            ssh_port INTEGER NOT NULL,
            cpus INTEGER NOT NULL,
            memory_mib INTEGER NOT NULL,
            disk_size INTEGER NOT NULL,
            dir TEXT NOT NULL,
            pid INTEGER,
            pid_start TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL)""",
        "CREATE INDEX vms_by_name ON vms (name)",
        "CREATE INDEX vms_by_digest ON vms (digest)",
    ),
]

VERSION = len(MIGRATIONS)  # what the baseline revision stands for
