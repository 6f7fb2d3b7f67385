#!/bin/bash
# shellcheck disable=SC2154 # initdir, moddir, systemdutildir: set by dracut
# dracut module kiwi-overlay: the root file system from NBD, AoE or a local device, with an overlay on top.
# Emitted by `kiwi-overlay dracut-module`. The hooks only call kiwi-overlay, which reads the kernel
# command line itself: no command line value is ever expanded by a shell.

# The kiwi-overlay command whose Python goes into the initrd: $KIWI_OVERLAY; else the command that
# emitted this module (kiwi-overlay-command: a venv's, /usr/local/bin's); else /usr/bin's (the Debian
# package), /usr/local/bin's (pip), or the one on PATH. dracut's PATH has neither /usr/local/bin
# nor a venv, so the recorded path is what finds a pip or venv install without any variable.
_kiwi_overlay() {
    local _recorded _command
    if [[ $KIWI_OVERLAY ]]; then
        command -v "$KIWI_OVERLAY"
        return
    fi
    [[ -r $moddir/kiwi-overlay-command ]] && read -r _recorded < "$moddir/kiwi-overlay-command"
    for _command in "$_recorded" /usr/bin/kiwi-overlay /usr/local/bin/kiwi-overlay; do
        if [[ $_command && -x $_command ]]; then
            echo "$_command"
            return 0
        fi
    done
    command -v kiwi-overlay
}

# dracut ignores what install() returns: stop the build rather than write an initrd without kiwi-overlay.
_kiwi_overlay_fail() {
    dfatal "kiwi-overlay: $*"
    exit 1
}

# called by dracut
check() {
    if ! _kiwi_overlay > /dev/null; then
        derror "kiwi-overlay: no kiwi-overlay command (${KIWI_OVERLAY:-recorded, /usr/bin, /usr/local/bin, PATH}); set KIWI_OVERLAY=PATH"
        return 1
    fi
    # A network root cannot be detected on the build host: include the module only when asked for.
    return 255
}

# called by dracut
depends() {
    # The hooks use dracut-lib (base); NBD is detached from the shutdown initramfs (shutdown).
    # No network module: kiwi-overlay brings links and addresses up itself, whatever the flavour.
    echo base shutdown
}

# called by dracut
installkernel() {
    # Transports and file systems, whatever the build host has loaded.
    hostonly='' instmods nbd aoe overlay squashfs erofs loop af_packet
    # vlan=, bond=, bridge= (the kernel loads them when kiwi-overlay creates such a link).
    hostonly='' instmods 8021q bonding bridge
    # The usual NICs of virtual machines and PCs (a hostonly initrd keeps the host's own); other
    # drivers come with add_drivers+=, or all of them with the kernel-network-modules module.
    instmods virtio_net e1000 e1000e igb r8169 vmxnet3
    # dm-verity for rd.root.overlay.verity, when dracut.conf.d asks for it.
    if _kiwi_overlay_verity; then
        hostonly='' instmods dm_verity
    fi
}

# called by dracut
install() {
    local _kiwi_overlay _output
    local -a _elf_files
    _kiwi_overlay=$(_kiwi_overlay) || _kiwi_overlay_fail "command ${KIWI_OVERLAY:-kiwi-overlay} not found"
    # First, so that a wrong kiwi_overlay_verity stops the build before the Python work.
    if _kiwi_overlay_verity; then
        inst_multiple veritysetup || _kiwi_overlay_fail "could not install veritysetup"
    fi
    # kiwi-overlay traces its imports under its own interpreter (whatever Python the image has now)
    # and writes that closure as bytecode; the interpreter and the libraries of the extension
    # modules come back, for dracut to install with their own libraries. Its one-line reason for
    # refusing (a dependency too old, an interpreter it cannot carry) is on stderr, in dracut's log.
    _output=$("$_kiwi_overlay" dracut-python --initdir "$initdir") \
        || _kiwi_overlay_fail "could not put its Python into the initrd (see the kiwi-overlay: line above)"
    mapfile -t _elf_files <<< "$_output"
    inst_multiple "${_elf_files[@]}" || _kiwi_overlay_fail "could not install the Python interpreter and its libraries"
    # The check of an ext4 write layer before it is mounted (rd.root.overlay.write.fsck).
    inst_multiple -o e2fsck
    # rd.root.overlay.partition=LABEL=... (and UUID, PARTLABEL, PARTUUID) asks blkid.
    inst_multiple -o blkid

    inst_hook cmdline 20 "$moddir/kiwi-overlay-cmdline.sh"
    if dracut_module_included systemd; then
        inst_script "$moddir/kiwi-overlay-generator.sh" "$systemdutildir/system-generators/kiwi-overlay-generator"
    else
        inst_hook mount 10 "$moddir/kiwi-overlay-mount.sh"
    fi
    inst_hook shutdown 45 "$moddir/kiwi-overlay-shutdown.sh"
    _kiwi_overlay_install_tls
}

# rd.root.overlay.verity needs veritysetup and dm_verity (about 0.6 MB zstd): only with
# kiwi_overlay_verity="yes" in dracut.conf.d, since a network root's verity cannot be seen at build time.
_kiwi_overlay_verity() {
    case ${kiwi_overlay_verity-} in
        yes)
            find_binary veritysetup > /dev/null \
                || _kiwi_overlay_fail 'kiwi_overlay_verity="yes" in dracut.conf.d needs veritysetup on the build host: install cryptsetup-bin (Debian, Ubuntu) or cryptsetup (openSUSE, Fedora)'
            ;;
        no | '') return 1 ;;
        *) _kiwi_overlay_fail "kiwi_overlay_verity=\"$kiwi_overlay_verity\" in dracut.conf.d: must be yes or no, e.g. kiwi_overlay_verity=\"yes\"" ;;
    esac
}

# The CA, client certificate and key that rd.root.overlay.nbd.tls.* name: every file of
# $kiwi_overlay_tls_dir (dracut.conf.d; default /etc/kiwi-overlay/tls) goes to /etc/kiwi-overlay/tls.
_kiwi_overlay_install_tls() {
    local _dir="${kiwi_overlay_tls_dir:-/etc/kiwi-overlay/tls}" _file
    [[ -d $_dir ]] || return 0
    for _file in "$_dir"/*; do
        [[ -f $_file ]] || continue
        inst_simple "$_file" "/etc/kiwi-overlay/tls/${_file##*/}" || _kiwi_overlay_fail "could not install $_file"
    done
}
