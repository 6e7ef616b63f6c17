"""Getting into a VM the way its users do: an SSH key, a NoCloud seed that provisions an admin user
with it at first boot, and OpenSSH's client over a port QEMU forwards on 127.0.0.1."""
