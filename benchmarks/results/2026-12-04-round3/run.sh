#!/usr/bin/env bash
# Before/after (issue 13's core) and durability benchmarks, one after another on a quiet machine.
set -u
OUT=/work/bench-out
B=/work/snap-before; A=/work/snap-after
run() { # name dir args...
  local name=$1 dir=$2; shift 2
  echo "== $name: $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/index.txt
  (cd $dir && timeout 3000 $dir/../main/.venv/bin/python -m benchmarks "$@" > $OUT/$name.md 2> $OUT/$name.progress.txt)
  echo "   done $(date -u +%T) rc=$?" >> $OUT/index.txt
}
PYB=/work/snap-before/.venv/bin/python
runb() { local name=$1; shift; echo "== $name: $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >> $OUT/index.txt
  (cd $B && timeout 3000 $PYB -m benchmarks "$@" > $OUT/$name.md 2> $OUT/$name.progress.txt); echo "   done $(date -u +%T) rc=$?" >> $OUT/index.txt; }
DRAIN="drain --jobs 30000 --batch-size 10 100 --kind asyncio threads --peer pgqueuer --repeat 3"
WAKE="wakeup --samples 400 --kind asyncio threads --peer pgqueuer --rounds 4"
runb drain-before $DRAIN
run drain-after $A $DRAIN
runb drain-before2 $DRAIN
run drain-after2 $A $DRAIN
runb wakeup-before $WAKE
run wakeup-after $A $WAKE
run workflows $A workflows --kind all --links 200 --steps 10000
for level in balanced volatile; do
  run drain-$level $A drain --jobs 30000 --batch-size 10 --kind asyncio threads --peer pgqueuer --repeat 3 --durability $level
  run wakeup-$level $A wakeup --samples 400 --kind asyncio threads --peer pgqueuer --rounds 4 --durability $level
  run bulk-$level $A bulk --jobs 100000 --repeat 3 --peer pgqueuer --durability $level
done
run bulk-durable $A bulk --jobs 100000 --repeat 3 --peer pgqueuer
echo ALLDONE >> $OUT/index.txt
