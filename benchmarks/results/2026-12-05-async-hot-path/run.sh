#!/usr/bin/env bash
# Before/after drain and wake-up, interleaved, on a quiet machine (session 2026-12-05).
set -u
OUT=/work/bench-out
B=/work/snap-before; A=/work/snap-after
PYA=/work/main/.venv/bin/python; PYB=/work/snap-before/.venv/bin/python
run() { # name dir python args...
  local name=$1 dir=$2 py=$3; shift 3
  echo "== $name: $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/index.txt
  (cd $dir && timeout 3000 $py -m benchmarks "$@" > $OUT/$name.md 2> $OUT/$name.progress.txt)
  echo "   done $(date -u +%T) rc=$?" >> $OUT/index.txt
}
DRAIN="drain --jobs 30000 --batch-size 10 100 --kind asyncio threads --peer pgqueuer --repeat 3"
WAKE="wakeup --samples 400 --kind asyncio threads --peer pgqueuer --rounds 4"
run drain-before $B $PYB $DRAIN
run drain-after $A $PYA $DRAIN
run drain-before2 $B $PYB $DRAIN
run drain-after2 $A $PYA $DRAIN
run wakeup-before $B $PYB $WAKE
run wakeup-after $A $PYA $WAKE
echo ALLDONE >> $OUT/index.txt
