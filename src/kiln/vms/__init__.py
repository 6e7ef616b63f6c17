"""VMs made from stored images, that people log into and save as images again (`kiln vm`).

    images.resolve(store, ID)        → the blob behind a managed image, gallery version or lab image
    lifecycle.create(store, request) → an overlay on that blob, a NoCloud seed, QEMU started detached
    lifecycle.start/stop/delete      → QEMU found again by pid + start time (kiln.store.vms)
    console.attach(vm)               → the serial console, interactively
    capture.capture(store, vm, ...)  → the VM's disk as a new image (specialized, or generalized)

A VM is a catalog resource (kiln.store.vms); its QEMU (kiln.vms.qemu) outlives the kiln process
that started it, and is told apart from a stranger with a reused pid by its start time.
"""
