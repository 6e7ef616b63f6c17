"""Validate: boot a built disk in QEMU and check it from inside before anything is published."""
