#!/bin/bash
# plugin.sh - DevStack plugin of ironic-snapshot
#
#   enable_plugin ironic https://opendev.org/openstack/ironic
#   enable_plugin ironic-snapshot <this repository>
#
# Enable it after ironic: DevStack runs the plugins of a phase in the order
# they were enabled, and this plugin must build the ramdisk (post-config)
# before Ironic uploads one (its extra), and register the runbook (extra)
# after Ironic has started and enrolled the nodes (its extra).
#
# Phases:
#   stack install      build (or take) the wheel, pip-install it on this host
#   stack post-config  build the IPA ramdisk with the wheel inside, into
#                      $IRONIC_DEPLOY_KERNEL / $IRONIC_DEPLOY_RAMDISK
#   stack extra        create the runbook with the snapshot_disk step and the
#                      queued Glance image it fills (none when
#                      IRONIC_SNAPSHOT_IMAGE_ID is set empty: the agent's
#                      configured credential creates one per run); approve
#                      the nodes
#   stack test-config  (tempest enabled) the flags of this project's tempest
#                      plugin: [service_available] ironic_snapshot and
#                      [baremetal_snapshot] (see the plugin's config.py)
#   unstack            nothing: the plugin runs no service of its own
#   clean              remove the built wheel and ramdisk, uninstall
#
# Settings and their defaults: devstack/settings.

_XTRACE_IRONIC_SNAPSHOT=$(set +o | grep xtrace)
set -o xtrace

# Prints the Glance endpoint the agent uploads to.
function ironic_snapshot_glance_endpoint {
    echo "${IRONIC_SNAPSHOT_GLANCE_ENDPOINT:-${GLANCE_URL:-}}"
}

# Prints a Python that has PyYAML and openstacksdk: DevStack's global
# virtualenv (the OpenStack client's), else $PYTHON.
function ironic_snapshot_python {
    if [[ -n ${DEVSTACK_VENV:-} && -x $DEVSTACK_VENV/bin/python3 ]]; then
        echo "$DEVSTACK_VENV/bin/python3"
    else
        echo "${PYTHON:-python3}"
    fi
}

# Runs an OpenStack client command as the cloud admin.
function ironic_snapshot_os {
    openstack --os-cloud "$IRONIC_SNAPSHOT_OS_CLOUD" "$@"
}

# Prints the one wheel of ironic-snapshot in $IRONIC_SNAPSHOT_WHEEL_DIR.
function ironic_snapshot_find_wheel {
    local -a wheels
    shopt -s nullglob
    wheels=("$IRONIC_SNAPSHOT_WHEEL_DIR"/ironic_snapshot-*.whl)
    shopt -u nullglob
    if [[ ${#wheels[@]} -ne 1 ]]; then
        die $LINENO "Expected one ironic-snapshot wheel in $IRONIC_SNAPSHOT_WHEEL_DIR, found ${#wheels[@]}: run 'stack install' again or set IRONIC_SNAPSHOT_WHEEL"
    fi
    echo "${wheels[0]}"
}

# Builds the wheel from the checkout with maturin and zig. One wheel serves
# this host and the ramdisk: abi3 (any CPython >= 3.11) and manylinux (old
# enough a glibc for CentOS Stream 9), so no container engine is needed.
function build_ironic_snapshot_wheel {
    if ! command -v cargo > /dev/null && [[ -x $HOME/.cargo/bin/cargo ]]; then
        PATH=$HOME/.cargo/bin:$PATH
    fi
    if ! command -v cargo > /dev/null; then
        die $LINENO "Building ironic-snapshot needs Rust 1.85 or newer (cargo on PATH): install it with rustup, or set IRONIC_SNAPSHOT_WHEEL to a prebuilt wheel"
    fi
    pip_install "maturin[zig]>=1.7,<2"
    mkdir -p "$IRONIC_SNAPSHOT_WHEEL_DIR"
    rm -f "$IRONIC_SNAPSHOT_WHEEL_DIR"/ironic_snapshot-*.whl
    (cd "$IRONIC_SNAPSHOT_DIR" &&
        maturin build --release --locked --zig \
            --compatibility "$IRONIC_SNAPSHOT_MANYLINUX" \
            --interpreter "${PYTHON:-python3}" \
            --out "$IRONIC_SNAPSHOT_WHEEL_DIR") ||
        die $LINENO "maturin could not build the ironic-snapshot wheel; see the output above"
    IRONIC_SNAPSHOT_WHEEL=$(ironic_snapshot_find_wheel)
}

# stack install: the package (Python API, IPA hardware manager, client
# plugin) on this host.
function install_ironic_snapshot {
    if [[ -z $IRONIC_SNAPSHOT_WHEEL ]]; then
        build_ironic_snapshot_wheel
    elif [[ ! -f $IRONIC_SNAPSHOT_WHEEL ]]; then
        die $LINENO "IRONIC_SNAPSHOT_WHEEL=$IRONIC_SNAPSHOT_WHEEL is not a file: point it at an ironic-snapshot wheel or unset it to build one"
    fi
    pip_install "$IRONIC_SNAPSHOT_WHEEL"
}

# stack post-config: the IPA ramdisk with ironic-snapshot inside, where
# Ironic's plugin looks for its deploy kernel and ramdisk. Ironic builds or
# downloads a ramdisk only when those files are missing and has no hook for
# extra hardware managers, so this plugin builds it first.
function build_ironic_snapshot_ramdisk {
    local wheel tmp element ext
    local -a args envs

    if [[ ${HOST_TOPOLOGY_ROLE:-} == subnode ]]; then
        # Ironic uploads the deploy images from the main node only.
        return 0
    fi
    if [[ -z ${IRONIC_DEPLOY_KERNEL:-} || -z ${IRONIC_DEPLOY_RAMDISK:-} ]]; then
        die $LINENO "IRONIC_DEPLOY_KERNEL and IRONIC_DEPLOY_RAMDISK are unset: enable the ironic plugin before ironic-snapshot in local.conf"
    fi
    wheel=$IRONIC_SNAPSHOT_WHEEL
    if [[ -z $wheel ]]; then
        wheel=$(ironic_snapshot_find_wheel) || exit 1
    fi

    if ! command -v disk-image-create > /dev/null; then
        # Ironic's own installer also pulls the Debian/RPM packages DIB needs.
        if declare -F install_diskimage_builder > /dev/null; then
            install_diskimage_builder
        else
            pip_install diskimage-builder
        fi
    fi
    if ! command -v ironic-python-agent-builder > /dev/null; then
        pip_install ironic-python-agent-builder
    fi

    tmp=$(mktemp -d --tmpdir="${DEST:-/tmp}" ironic-snapshot-ramdisk.XXXXXX)
    args=(--elements-path "$IRONIC_SNAPSHOT_DIR/devstack/elements"
        -o "$tmp/ironic-agent" -e ironic-snapshot)
    if [[ -n $IRONIC_SNAPSHOT_RAMDISK_RELEASE ]]; then
        args+=(-r "$IRONIC_SNAPSHOT_RAMDISK_RELEASE")
    fi
    for element in $IRONIC_SNAPSHOT_RAMDISK_ELEMENTS; do
        args+=(-e "$element")
    done
    if declare -F is_deploy_iso_required > /dev/null && is_deploy_iso_required; then
        args+=(-e iso)
    fi

    envs=(DIB_IRONIC_SNAPSHOT_WHEEL="$wheel"
        DIB_IRONIC_SNAPSHOT_GLANCE_ENDPOINT="$(ironic_snapshot_glance_endpoint)"
        DIB_DHCP_TIMEOUT="${IRONIC_DIB_DHCP_TIMEOUT:-60}"
        DIB_CLOUD_INIT_DATASOURCES="ConfigDrive,openstack")
    # Same agent and constraints as the ramdisk Ironic would build: the
    # checkouts DevStack made, when there are some.
    if [[ -d ${IRONIC_PYTHON_AGENT_DIR:-} ]]; then
        envs+=(DIB_REPOLOCATION_ironic_python_agent="$IRONIC_PYTHON_AGENT_DIR"
            DIB_REPOREF_ironic_python_agent="${TARGET_BRANCH:-master}")
    fi
    if [[ -d ${DEST:-}/requirements ]]; then
        envs+=(DIB_REPOLOCATION_requirements="$DEST/requirements"
            DIB_REPOREF_requirements="${TARGET_BRANCH:-master}")
    fi

    echo_summary "Building the IPA ramdisk with ironic-snapshot ($IRONIC_SNAPSHOT_RAMDISK_DISTRO $IRONIC_SNAPSHOT_RAMDISK_RELEASE)"
    env "${envs[@]}" ironic-python-agent-builder "${args[@]}" "$IRONIC_SNAPSHOT_RAMDISK_DISTRO" ||
        die $LINENO "ironic-python-agent-builder failed to build the ramdisk; see the output above"

    for ext in kernel initramfs; do
        [[ -s $tmp/ironic-agent.$ext ]] ||
            die $LINENO "ironic-python-agent-builder made no $tmp/ironic-agent.$ext"
    done
    chmod -R +r "$tmp"
    mkdir -p "$(dirname "$IRONIC_DEPLOY_KERNEL")" "$(dirname "$IRONIC_DEPLOY_RAMDISK")"
    mv "$tmp/ironic-agent.kernel" "$IRONIC_DEPLOY_KERNEL"
    mv "$tmp/ironic-agent.initramfs" "$IRONIC_DEPLOY_RAMDISK"
    if [[ -e $tmp/ironic-agent.iso && -n ${IRONIC_DEPLOY_ISO:-} ]]; then
        mv "$tmp/ironic-agent.iso" "$IRONIC_DEPLOY_ISO"
    fi
    rm -rf "$tmp"
}

# Writes the runbook steps of $1 (YAML) into $2 (JSON) with every
# ${IRONIC_SNAPSHOT_*} placeholder of an argument filled in from the shell
# variables, leaving out arguments that end up empty.
function ironic_snapshot_render_runbook {
    local name
    local -a envs
    for name in $(compgen -v IRONIC_SNAPSHOT_); do
        envs+=("$name=${!name}")
    done
    env "${envs[@]}" "$(ironic_snapshot_python)" - "$1" "$2" << 'EOF'
import json
import os
import string
import sys

import yaml

with open(sys.argv[1]) as f:
    steps = yaml.safe_load(f)
for step in steps:
    args = {}
    for key, value in (step.get("args") or {}).items():
        if isinstance(value, str):
            try:
                value = string.Template(value).substitute(os.environ)
            except KeyError as e:
                sys.exit(f"Runbook argument {key} uses ${{{e.args[0]}}}, which is "
                         f"not set: set it in local.conf")
            if not value:
                continue
        args[key] = value
    step["args"] = args
with open(sys.argv[2], "w") as f:
    json.dump(steps, f, indent=2)
EOF
}

# stack extra: the runbook, the queued image it fills, approved nodes.
function configure_ironic_snapshot_runbook {
    local image_id steps node

    if [[ ${HOST_TOPOLOGY_ROLE:-} == subnode ]]; then
        return 0
    fi
    IRONIC_SNAPSHOT_GLANCE_ENDPOINT=$(ironic_snapshot_glance_endpoint)
    # IRONIC_SNAPSHOT_IMAGE_ID set in local.conf: that image, or, set empty,
    # no image_id in the runbook at all: the step then creates an image per
    # run with the credential of the agent's [snapshot] configuration (and
    # finds Glance in the catalog when no endpoint is given).
    if [[ -z ${IRONIC_SNAPSHOT_IMAGE_ID+set} ]]; then
        if [[ -z $IRONIC_SNAPSHOT_GLANCE_ENDPOINT ]]; then
            die $LINENO "No Glance endpoint for the runbook: enable glance or set IRONIC_SNAPSHOT_GLANCE_ENDPOINT"
        fi
        # A Glance image is filled once: reuse a queued one, else make one.
        image_id=$("$(ironic_snapshot_python)" "$IRONIC_SNAPSHOT_DIR/devstack/tools/queued-image" \
            --os-cloud "$IRONIC_SNAPSHOT_OS_CLOUD" --name "$IRONIC_SNAPSHOT_IMAGE_NAME") ||
            die $LINENO "Could not find or create the queued Glance image $IRONIC_SNAPSHOT_IMAGE_NAME; see the error above"
        die_if_not_set $LINENO image_id "Could not create the Glance image $IRONIC_SNAPSHOT_IMAGE_NAME for the runbook"
        # Read by ironic_snapshot_render_runbook (through compgen), for the file.
        # shellcheck disable=SC2034
        IRONIC_SNAPSHOT_IMAGE_ID=$image_id
    fi

    steps=$(mktemp --suffix=.json)
    ironic_snapshot_render_runbook "$IRONIC_SNAPSHOT_RUNBOOK_FILE" "$steps" ||
        die $LINENO "Could not fill in the runbook $IRONIC_SNAPSHOT_RUNBOOK_FILE"
    if ironic_snapshot_os baremetal runbook show "$IRONIC_SNAPSHOT_RUNBOOK_NAME" > /dev/null 2>&1; then
        ironic_snapshot_os baremetal runbook delete "$IRONIC_SNAPSHOT_RUNBOOK_NAME"
    fi
    ironic_snapshot_os baremetal runbook create --name "$IRONIC_SNAPSHOT_RUNBOOK_NAME" \
        --steps "$steps" ||
        die $LINENO "Could not create the runbook $IRONIC_SNAPSHOT_RUNBOOK_NAME"
    rm -f "$steps"
    # Runbook traits exist from API 1.112; before that the name is the trait.
    ironic_snapshot_os baremetal runbook trait add "$IRONIC_SNAPSHOT_RUNBOOK_NAME" \
        "$IRONIC_SNAPSHOT_RUNBOOK_TRAIT" ||
        echo "Ironic has no runbook traits (API < 1.112): nodes are approved by the trait $IRONIC_SNAPSHOT_RUNBOOK_NAME"

    if [[ $IRONIC_SNAPSHOT_APPROVE_NODES == True ]]; then
        for node in $(ironic_snapshot_os baremetal node list -f value -c UUID); do
            ironic_snapshot_os baremetal node add trait "$node" "$IRONIC_SNAPSHOT_RUNBOOK_TRAIT"
        done
    fi
}

# stack test-config: the flags ironic_snapshot.tempest_plugin reads.
function configure_ironic_snapshot_tempest {
    local -a step_args=()

    if ! is_service_enabled tempest; then
        return 0
    fi
    iniset "$TEMPEST_CONFIG" service_available ironic_snapshot True
    iniset "$TEMPEST_CONFIG" baremetal_snapshot glance_endpoint "$(ironic_snapshot_glance_endpoint)"
    # The runbook scenario runs the runbook on every tempest run: only a
    # runbook whose step creates its own image (IRONIC_SNAPSHOT_IMAGE_ID set
    # empty) can run more than once.
    if [[ -n ${IRONIC_SNAPSHOT_IMAGE_ID+set} && -z $IRONIC_SNAPSHOT_IMAGE_ID ]]; then
        iniset "$TEMPEST_CONFIG" baremetal_snapshot runbook "$IRONIC_SNAPSHOT_RUNBOOK_NAME"
    fi
    if [[ -n $IRONIC_SNAPSHOT_DEVICE ]]; then
        step_args+=("device:$IRONIC_SNAPSHOT_DEVICE")
    fi
    if [[ -n $IRONIC_SNAPSHOT_MEMORY_LIMIT ]]; then
        step_args+=("memory_limit:$IRONIC_SNAPSHOT_MEMORY_LIMIT")
    fi
    if [[ ${#step_args[@]} -gt 0 ]]; then
        iniset "$TEMPEST_CONFIG" baremetal_snapshot step_args "$(IFS=,; echo "${step_args[*]}")"
    fi
    # Which node the scenarios may service is the operator's choice: none by
    # default (the scenarios are then skipped, saying so).
    if [[ -n $IRONIC_SNAPSHOT_TEMPEST_NODE ]]; then
        iniset "$TEMPEST_CONFIG" baremetal_snapshot node "$IRONIC_SNAPSHOT_TEMPEST_NODE"
    fi
    # Likewise the bare-metal server the Nova scenario snapshots (its
    # compute service must run ironic-snapshot's driver).
    if [[ -n $IRONIC_SNAPSHOT_TEMPEST_SERVER ]]; then
        iniset "$TEMPEST_CONFIG" baremetal_snapshot server "$IRONIC_SNAPSHOT_TEMPEST_SERVER"
    fi
}

# clean: what install and post-config left behind.
function cleanup_ironic_snapshot {
    rm -rf "$IRONIC_SNAPSHOT_WHEEL_DIR"
    if [[ $IRONIC_SNAPSHOT_BUILD_RAMDISK == True ]]; then
        rm -f "${IRONIC_DEPLOY_KERNEL:-}" "${IRONIC_DEPLOY_RAMDISK:-}"
    fi
    pip_uninstall ironic-snapshot
}

if is_service_enabled ir-api ir-cond; then
    if [[ $1 == stack ]]; then
        case $2 in
            install)
                echo_summary "Installing ironic-snapshot"
                install_ironic_snapshot
                ;;
            post-config)
                if [[ $IRONIC_SNAPSHOT_BUILD_RAMDISK == True ]]; then
                    build_ironic_snapshot_ramdisk
                fi
                ;;
            extra)
                echo_summary "Registering the ironic-snapshot runbook $IRONIC_SNAPSHOT_RUNBOOK_NAME"
                configure_ironic_snapshot_runbook
                ;;
            test-config)
                configure_ironic_snapshot_tempest
                ;;
        esac
    elif [[ $1 == unstack ]]; then
        # No service of ours to stop: the step runs inside the agent.
        :
    elif [[ $1 == clean ]]; then
        echo_summary "Cleaning up ironic-snapshot"
        cleanup_ironic_snapshot
    fi
fi

$_XTRACE_IRONIC_SNAPSHOT
