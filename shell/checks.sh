# Sourced by the scripts in shell/: the one-line user errors of docs/ERRORS.md and checks of arguments and
# variables. A failed check prints `error: <script>: <what>` on stderr and exits with 2, before anything runs.

die() { echo "error: $*" >&2; exit 2; }
fail() { die "${0##*/}: $*"; }

# need_int NAME VALUE MIN [MAX]: VALUE is a decimal integer (no sign, no leading zero) from MIN to MAX.
need_int() {
  local name="$1" value="$2" min="$3" max="${4:-}" what
  case "$min/$max" in
    0/) what="a non-negative integer" ;;
    1/) what="a positive integer" ;;
    */) what="an integer of at least $min" ;;
    *) what="an integer from $min to $max" ;;
  esac
  if ! [[ "$value" =~ ^(0|[1-9][0-9]{0,17})$ ]] || ((value < min)) || { [ -n "$max" ] && ((value > max)); }; then
    fail "$name must be $what, got '$value'"
  fi
}

# need_number NAME VALUE: VALUE is a decimal number above 0.
need_number() {
  if ! [[ "$2" =~ ^([0-9]+(\.[0-9]*)?|\.[0-9]+)$ && "$2" =~ [1-9] ]]; then
    fail "$1 must be a number above 0, got '$2'"
  fi
}

# need_fraction NAME VALUE: VALUE is a decimal number from 0 to 1.
need_fraction() {
  if ! [[ "$2" =~ ^(0(\.[0-9]*)?|\.[0-9]+|1(\.0*)?)$ ]]; then
    fail "$1 must be a number from 0 to 1, got '$2'"
  fi
}

# flag_value VAR FLAG [VALUE ...]: sets VAR to the value after FLAG (pass the "$@" of the argument loop); a
# missing value, or another --flag in its place, is an error.
flag_value() {
  if [ $# -lt 3 ] || [[ "$3" == --* ]]; then
    fail "$2 needs a value"
  fi
  printf -v "$1" '%s' "$3"
}

# flag_words VAR FLAG [VALUE ...]: as flag_value for a flag whose value holds other flags ("--seed 1 --x y").
flag_words() {
  [ $# -ge 3 ] || fail "$2 needs a value"
  printf -v "$1" '%s' "$3"
}

# split_words VAR TEXT: VAR becomes the array of TEXT's whitespace-separated words, taken literally (no globbing,
# no expansion, quotes are not interpreted).
split_words() {
  local -n words="$1"
  read -r -d '' -a words <<< "$2" || true
}
