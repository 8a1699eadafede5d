# Plugin pins (Packer 1.7+; run `packer init .` once). Kept in a file of its own: Packer 1.6.6, which
# has the qemu builder built in, does not know required_plugins, so the factory validates and builds
# there without this file.
packer {
  required_version = ">= 1.6.6"
  required_plugins {
    qemu = {
      version = "= 1.1.4"
      source  = "github.com/hashicorp/qemu"
    }
  }
}
