# help.sh - `--help` (or -h) for the launch and data scripts, sourced by
# each: prints the script's header comment and exits 0. Arguments after a
# `--` belong to a program the script runs, and are left alone.
script_help() {
    for arg in "$@"; do
        case $arg in
            -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
            --) return ;;
        esac
    done
}
