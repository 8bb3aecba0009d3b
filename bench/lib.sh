# Timing helpers the benchmark scripts share: `source bench/lib.sh` from the repository root.

now() { date +%s.%N; }
# The median of the numbers on stdin, one per line.
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# Seconds COMMAND... takes, its output discarded; a failure ends the script.
elapsed() { local s e; s=$(now); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; e=$(now); echo "$e - $s" | bc -l; }

# measure NAME COMMAND...: runs COMMAND $repeats times and stores the median of what it prints
# in med[NAME].
declare -A med
measure() {
  local name=$1; shift
  local xs=()
  for _ in $(seq 1 "$repeats"); do xs+=("$("$@")"); done
  med[$name]=$(printf '%s\n' "${xs[@]}" | median)
}
