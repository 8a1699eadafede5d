# Variables of a Flower appliance build. Values come in layers (later wins):
#   10-common.auto.pkrvars.hcl  -> 20-os.auto.pkrvars.hcl -> 30-variant.auto.pkrvars.hcl
#   -> your -var-file=... -> your -var name=value
# The layers are generated from matrix.yaml by `python build.py matrix`; do not edit them here.

# --- What the image is --------------------------------------------------------------------------
variable "variant" {
  type        = string
  description = "Variant name: {role}-{flower}-{os}-{accel}-{profile}-{framework}-{arch}."
}

variable "role" {
  type        = string
  description = "Appliance role: superlink (Flower server) or supernode (Flower client)."
}

variable "flower_version" {
  type        = string
  description = "Flower (flwr) version installed in the appliance."
}

variable "os" {
  type        = string
  description = "Operating system of the image: ubuntu2404, opensuse156 or debian12."
}

variable "accel" {
  type        = string
  description = "Accelerator: cpu, or gpu (NVIDIA driver and a CUDA build of the framework)."
}

variable "profile" {
  type        = string
  description = "standard (data centre) or edge (minimal image, light framework)."
}

variable "framework" {
  type        = string
  description = "ML framework baked into the image: pytorch, sklearn, tensorflow or numpy."
}

variable "arch" {
  type        = string
  description = "CPU architecture of the image: x86_64 or aarch64."
}

# --- Pinned components --------------------------------------------------------------------------
variable "python_version" {
  type        = string
  description = "Python version of the Flower virtualenv (from the distribution)."
}

variable "framework_packages" {
  type        = string
  description = "Pinned pip requirements of the framework, space separated."
}

variable "framework_index_url" {
  type        = string
  default     = ""
  description = "Extra pip index the framework packages come from (empty: PyPI only)."
}

variable "cuda_version" {
  type        = string
  default     = ""
  description = "CUDA version the GPU framework build targets (GPU variants)."
}

variable "nvidia_driver" {
  type        = string
  default     = ""
  description = "NVIDIA driver version installed in GPU variants."
}

variable "one_context" {
  type        = string
  description = "How one-context gets in: package (released .deb/.rpm from one_context_url) or source (local images: built from upstream source, already in the local base qcow2)."
}

variable "one_context_version" {
  type        = string
  default     = ""
  description = "one-context package version (package mode)."
}

variable "one_context_url" {
  type        = string
  default     = ""
  description = "URL of the one-context .deb/.rpm (package mode)."
}

# --- Base image ---------------------------------------------------------------------------------
variable "base_image_url" {
  type        = string
  default     = ""
  description = "Base cloud image: a vendor URL (pinned in matrix.yaml) or file:///path/base.qcow2 for a local base."
  validation {
    condition     = length(var.base_image_url) > 0
    error_message = "The base_image_url variable is empty: this variant builds from a local base, pass -var base_image_url=file:///path/to/base.qcow2."
  }
}

variable "base_image_checksum" {
  type        = string
  default     = ""
  description = "Checksum of the base image, sha256:<hex>."
  validation {
    condition     = length(var.base_image_checksum) > 0
    error_message = "The base_image_checksum variable is empty: pass -var base_image_checksum=sha256:<hex of the base image>."
  }
}

# --- Build VM -----------------------------------------------------------------------------------
variable "accelerator" {
  type        = string
  default     = "kvm"
  description = "QEMU accelerator: kvm where it works, tcg (software emulation) elsewhere."
}

variable "cpus" {
  type        = number
  default     = 2
  description = "vCPUs of the build VM."
}

variable "memory" {
  type        = number
  default     = 2048
  description = "Memory of the build VM in MiB."
}

variable "disk_size" {
  type        = string
  default     = "8G"
  description = "Virtual size of the image disk."
}

variable "ssh_timeout" {
  type        = string
  default     = "45m"
  description = "How long to wait for the build VM's SSH."
}

variable "qemu_binary" {
  type        = string
  default     = "qemu-system-x86_64"
  description = "QEMU system emulator for the image architecture."
}

variable "machine_type" {
  type        = string
  default     = "pc"
  description = "QEMU machine type (pc for x86_64, virt for aarch64)."
}

variable "qemu_cpu" {
  type        = string
  default     = "max"
  description = "QEMU CPU model; max also works under TCG, where the default CPU lacks instructions wheels need."
}

variable "firmware" {
  type        = string
  default     = ""
  description = "UEFI firmware file passed with -bios (aarch64); empty for BIOS boot."
}

variable "output_directory" {
  type        = string
  default     = ""
  description = "Where the image and its manifest go (default: output/ next to these files)."
}
