"""bareboat.spec: image config + user options -> an OCI runtime-spec bundle.

- `options`  RunOptions and friends: the user's choices as plain data (shared by all layers)
- `parse`    docker-style flag values (`-v`, `--tmpfs`, `--memory`, `-e`, `-p`, ...) -> data
- `users`    `-u`/image User -> uid, gid, groups, home, from the image's passwd and group
- `rootread` reading a small file inside an untrusted rootfs (openat2 RESOLVE_IN_ROOT)
- `defaults` what docker puts in every spec (mounts, capabilities, masks, seccomp)
- `etcfiles` per-container /etc/hostname, hosts, resolv.conf
- `builder`  build_spec / write_bundle / exec_process

Nothing is imported here: front ends import the module they need, and start-up stays cheap.
"""
