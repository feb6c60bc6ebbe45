#!/usr/bin/env bash
# Regenerate every committed result under results/ with the exact commands that made it
# (README.md "Results", results/ood/COMMANDS.md). Model weights (model.pt, members.pt) and
# arrays (predictions.npz, scores.npz) are not committed: this script recreates them too.
#
#   results/regenerate.sh [train] [al] [ood] [recipes]     # default: all four, in this order
#
# Run from anywhere; it works in the repository root. DRY=1 prints the commands and runs nothing. Each result folder is deleted before its
# command reruns it. `ood` needs the models of `train` (results/cifar10_train/{baseline,crl}).
# Times on one CPU core: train ~15 min per model (12 models incl. the 3 ensemble members, ~3 h),
# al ~3 min per trial (18 trials, ~1 h), ood ~1 min per detector (12 runs).
# Data: CIFAR10 and TIN default to the shared copies the committed results used; set them to
# other copies of the same archives if yours live elsewhere. Add new results' commands here.
set -euo pipefail
cd "$(dirname "$0")/.."

CIFAR10=${CIFAR10:-../shared/data/cifar10.tar.gz}                  # JPEG CIFAR-10, ImageFolder tar
TIN=${TIN:-/work/shared/data/tinyimagenet-resize.tar.gz}            # TinyImageNet (resize), 10,000 images
export ACTIVECRL_DATA=${ACTIVECRL_DATA:-/work/data_cache}           # where the decoded uint8 cache goes
export OMP_NUM_THREADS=1                                            # the committed runs used one thread
export COLUMNS=${COLUMNS:-320}                                      # tables written to files are not cut
ACTIVECRL=${ACTIVECRL:-activecrl}
PYTHON=${PYTHON:-python}                                            # for results/*/significance.py
if [ -n "${DRY:-}" ]; then ACTIVECRL="echo activecrl"; PYTHON="echo python"; fi   # DRY=1: print the commands, touch nothing

fresh() { [ -n "${DRY:-}" ] || rm -rf "$@"; }  # a rerun replaces the old result folder entirely
to_file() { local file=$1; shift; if [ -n "${DRY:-}" ]; then echo "$("$@") > $file"; else "$@" > "$file"; fi; }

train() {  # README: "Confidence estimates (issue #2)"
  for t in baseline crl; do
    fresh results/cifar10_train/$t
    $ACTIVECRL train --dataset "$CIFAR10" --model small_cnn --trainer $t --epochs 12 --seed 0 --device cpu --out results/cifar10_train/$t
    for s in 1 2; do
      fresh results/cifar10_train/$t-s$s
      $ACTIVECRL train --dataset "$CIFAR10" --model small_cnn --trainer $t --epochs 12 --seed $s --device cpu --out results/cifar10_train/$t-s$s
    done
  done
  C="--dataset $CIFAR10 --model small_cnn --epochs 12 --seed 0 --device cpu"
  fresh results/cifar10_train/{mc_dropout,aes6,aleatoric,ensemble3-crl05}
  $ACTIVECRL train $C --method mc_dropout --out results/cifar10_train/mc_dropout
  $ACTIVECRL train $C --method aes --snapshots 6 --out results/cifar10_train/aes6
  $ACTIVECRL train $C --method aleatoric --out results/cifar10_train/aleatoric
  $ACTIVECRL train $C --method ensemble --members 3 --trainer crl --crl-weight 0.5 --out results/cifar10_train/ensemble3-crl05
  $ACTIVECRL rescore results/cifar10_train/*/ --bootstrap 1000      # 95% bootstrap intervals (ci95)
  $ACTIVECRL report results/cifar10_train/*/ -o results/cifar10_train/report.md
  $PYTHON results/cifar10_train/significance.py    # writes results/cifar10_train/significance.md
}

al() {  # README: "Active learning (issue #3)"; the preset's dataset is ../shared/data/cifar10.tar.gz
  for s in random entropy least_conf coreset; do
    fresh results/al_cifar10/$s-baseline
    $ACTIVECRL run --config cifar10_shared_cpu --trials 3 --dataset "$CIFAR10" --strategy $s --trainer baseline --device cpu --out results/al_cifar10/$s-baseline
  done
  fresh results/al_cifar10/least_conf-crl results/al_cifar10/mc_dropout-baseline
  $ACTIVECRL run --config cifar10_shared_cpu --trials 3 --dataset "$CIFAR10" --strategy least_conf --trainer crl --device cpu --out results/al_cifar10/least_conf-crl
  $ACTIVECRL run --config cifar10_shared_cpu --trials 3 --dataset "$CIFAR10" --strategy mc_dropout --trainer baseline --device cpu --out results/al_cifar10/mc_dropout-baseline
  $ACTIVECRL plot results/al_cifar10/*-*/ -o results/al_cifar10/curves.png
  to_file results/al_cifar10/summary.txt $ACTIVECRL summary results/al_cifar10/*-*/
  R=results/al_cifar10
  fresh $R/compare
  $ACTIVECRL compare $R/random-baseline $R/entropy-baseline $R/least_conf-baseline $R/least_conf-crl \
      $R/coreset-baseline $R/mc_dropout-baseline -o $R/compare
}

ood() {  # results/ood/COMMANDS.md
  for t in baseline crl; do
    common="--run results/cifar10_train/$t --ood $TIN --data-dir $ACTIVECRL_DATA --device cpu"
    for det in msp odin mahalanobis energy; do
      fresh results/ood/$t-$det
      $ACTIVECRL ood $common --detector $det --out results/ood/$t-$det
    done
    fresh results/ood/$t-odin-testood results/ood/$t-mahalanobis-fe-testood
    $ACTIVECRL ood $common --detector odin --tune-on-test-ood --out results/ood/$t-odin-testood
    $ACTIVECRL ood $common --detector mahalanobis --feature-ensemble --tune-on-test-ood \
        --out results/ood/$t-mahalanobis-fe-testood
  done
  $ACTIVECRL report results/ood/*/ -o results/ood/report.md
}

recipes() {  # README: "A CPU recipe not behind a plain script (issue #10)"; ~40 min at load ~1
  R=results/recipes_cpu
  C="--config cifar10_shared_cpu --dataset $CIFAR10 --strategy random --trainer baseline --budget 1000 --trials 1 --epochs 20 --device cpu"
  fresh $R/cpu_recipe_before $R/cpu_recipe_after
  $ACTIVECRL run $C --initial 1000 --stages 3 --out $R/cpu_recipe_before
  $ACTIVECRL run $C --initial 1000 --stages 3 --schedule onecycle --nesterov --weight-decay 5e-4 --out $R/cpu_recipe_after
  F="--schedule onecycle --nesterov --weight-decay 5e-4 --model small_cnn4"  # = preset cifar10_cpu_fast's training
  fresh $R/cpu_recipe_after_cnn4_1k $R/cpu_recipe_after_cnn4_2k3k
  $ACTIVECRL run $C $F --initial 1000 --stages 1 --out $R/cpu_recipe_after_cnn4_1k
  $ACTIVECRL run $C $F --initial 2000 --stages 2 --out $R/cpu_recipe_after_cnn4_2k3k
  to_file $R/plain_reference.jsonl ${DRY:+echo} python bench/plain_cpu_reference.py --dataset "$CIFAR10" \
      --labels 1000 2000 3000 --epochs 20 --threads 1
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(train al ood recipes)
for step in "${steps[@]}"; do
  case $step in
    train | al | ood | recipes) echo "== $step"; $step ;;
    *) echo "unknown step '$step': expected train, al, ood or recipes" >&2; exit 2 ;;
  esac
done
