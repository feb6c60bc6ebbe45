#!/usr/bin/env bash
# Regenerate every committed result under results/ with the exact commands that made it
# (results/README.md, results/ood/COMMANDS.md). Model weights (model.pt, members.pt) and
# arrays (predictions.npz, scores.npz) are not committed: this script recreates them too.
#
#   results/regenerate.sh [train] [al] [ood] [recipes] [cold_start] [autolabel]   # default: all six, in this order
#
# Run from anywhere; it works in the repository root. DRY=1 prints the commands and runs nothing. Each result folder is deleted before its
# command reruns it. `ood` needs the models of `train` (results/cifar10_train/{baseline,crl}).
# Times on one CPU core: train ~15 min per model (12 models incl. the 3 ensemble members, ~3 h),
# al ~3 min per trial (18 trials, ~1 h), ood ~1 min per detector (12 runs).
# Data: CIFAR10 is the JPEG CIFAR-10 archive (python results/make_cifar10_archive.py data/cifar10.tar.gz
# builds it), TIN the TinyImageNet (resize) archive; see results/README.md. Add new results' commands here.
set -euo pipefail
cd "$(dirname "$0")/.."

CIFAR10=${CIFAR10:-data/cifar10.tar.gz}                          # JPEG CIFAR-10, ImageFolder tar
TIN=${TIN:-data/tinyimagenet-resize.tar.gz}                      # TinyImageNet (resize), 10,000 images
export OMP_NUM_THREADS=1                                            # the committed runs used one thread
export COLUMNS=${COLUMNS:-320}                                      # tables written to files are not cut
ACTIVECRL=${ACTIVECRL:-activecrl}
PYTHON=${PYTHON:-python}                                            # for results/*/significance.py
if [ -n "${DRY:-}" ]; then ACTIVECRL="echo activecrl"; PYTHON="echo python"; fi   # DRY=1: print the commands, touch nothing

fresh() { [ -n "${DRY:-}" ] || rm -rf "$@"; }  # a rerun replaces the old result folder entirely
to_file() { local file=$1; shift; if [ -n "${DRY:-}" ]; then echo "$("$@") > $file"; else "$@" > "$file"; fi; }
# curves, summary table and comparison (AUBC intervals, penalty matrix) of an active-learning result folder
al_report() {
  local R=$1; shift
  $ACTIVECRL plot "$@" -o $R/curves.png
  to_file $R/summary.txt $ACTIVECRL summary "$@"
  fresh $R/compare
  $ACTIVECRL compare "$@" -o $R/compare
}

train() {  # README: "Confidence estimates"; the step schedule, Nesterov off and wd 1e-4 pinned: the paper optimiser these runs used
  for t in baseline crl; do
    fresh results/cifar10_train/$t
    $ACTIVECRL train --dataset "$CIFAR10" --model small_cnn --schedule step --no-nesterov --weight-decay 1e-4 --trainer $t --epochs 12 --seed 0 --device cpu --out results/cifar10_train/$t
    for s in 1 2; do
      fresh results/cifar10_train/$t-s$s
      $ACTIVECRL train --dataset "$CIFAR10" --model small_cnn --schedule step --no-nesterov --weight-decay 1e-4 --trainer $t --epochs 12 --seed $s --device cpu --out results/cifar10_train/$t-s$s
    done
  done
  C="--dataset $CIFAR10 --model small_cnn --schedule step --no-nesterov --weight-decay 1e-4 --epochs 12 --seed 0 --device cpu"
  fresh results/cifar10_train/{mc_dropout,aes6,aleatoric,ensemble3-crl05}
  $ACTIVECRL train $C --method mc_dropout --out results/cifar10_train/mc_dropout
  $ACTIVECRL train $C --method aes --snapshots 6 --out results/cifar10_train/aes6
  $ACTIVECRL train $C --method aleatoric --out results/cifar10_train/aleatoric
  $ACTIVECRL train $C --method ensemble --members 3 --trainer crl --crl-weight 0.5 --out results/cifar10_train/ensemble3-crl05
  $ACTIVECRL rescore results/cifar10_train/*/ --bootstrap 1000      # 95% bootstrap intervals (ci95)
  $ACTIVECRL report results/cifar10_train/*/ -o results/cifar10_train/report.md
  $PYTHON results/cifar10_train/significance.py    # writes results/cifar10_train/significance.md
}

al() {  # README: "Active learning" (old preset) and "Active learning with the CPU recipe"
  R=results/al_cifar10      # the preset's training before the CPU recipe (small_cnn, step schedule, wd 1e-4)
  C="--config cifar10_shared_cpu --trials 3 --dataset $CIFAR10 --device cpu --threads 1"
  OLD="--model small_cnn --schedule step --no-nesterov --weight-decay 1e-4"
  for s in random entropy least_conf coreset mc_dropout; do
    fresh $R/$s-baseline
    $ACTIVECRL run $C $OLD --strategy $s --trainer baseline --out $R/$s-baseline
  done
  fresh $R/least_conf-crl
  $ACTIVECRL run $C $OLD --strategy least_conf --trainer crl --out $R/least_conf-crl
  runs="$R/random-baseline $R/entropy-baseline $R/least_conf-baseline $R/least_conf-crl $R/coreset-baseline $R/mc_dropout-baseline"
  al_report $R $runs

  R=results/al_cpu_recipe   # the preset as it is now (small_cnn4 + the CPU recipe)
  for s in random badge; do
    fresh $R/$s-baseline
    $ACTIVECRL run $C --strategy $s --trainer baseline --out $R/$s-baseline
  done
  for t in baseline crl fmfp sure; do
    fresh $R/least_conf-$t
    $ACTIVECRL run $C --strategy least_conf --trainer $t --out $R/least_conf-$t
  done
  runs="$R/random-baseline $R/least_conf-baseline $R/least_conf-crl $R/least_conf-fmfp $R/least_conf-sure $R/badge-baseline"
  al_report $R $runs
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

recipes() {  # README: "Beyond CRL: results" and "A CPU recipe not behind a plain script"
  R=results/recipes_cpu
  # classification: six recipes, 3 seeds, small_cnn4 with the CPU recipe on a 5,000-image subset, 20 epochs
  for s in 0 1 2; do for t in baseline crl sam swa fmfp sure; do
    fresh $R/cls/$t-s$s
    $ACTIVECRL train --dataset "$CIFAR10" --model small_cnn4 --trainer $t --train-subset 5000 --epochs 20 \
        --schedule onecycle --nesterov --weight-decay 5e-4 --seed $s --threads 1 --device cpu --out $R/cls/$t-s$s
  done; done
  $ACTIVECRL report $R/cls/*/ -o $R/cls/report.md
  # the CPU recipe against the plain script: random labels 1,000 -> 5,000, 20 epochs, 3 seeds each
  C="--config cifar10_shared_cpu --dataset $CIFAR10 --strategy random --trainer baseline --device cpu --threads 1"
  fresh $R/cpu_recipe_before $R/after
  # before: the old preset's training (small_cnn, step schedule, weight decay 1e-4), one trial, 1,000-3,000 labels
  $ACTIVECRL run $C --model small_cnn --schedule step --no-nesterov --weight-decay 1e-4 --initial 1000 --budget 1000 \
      --stages 3 --trials 1 --epochs 20 --out $R/cpu_recipe_before
  fresh $R/cpu_recipe_small_cnn
  $ACTIVECRL run $C --model small_cnn --initial 1000 --budget 1000 --stages 3 --trials 1 --epochs 20 \
      --out $R/cpu_recipe_small_cnn                               # the recipe on the old network
  $ACTIVECRL run $C --initial 1000 --budget 1000 --stages 5 --trials 3 --epochs 20 --out $R/after
  plain="python bench/plain_cpu_reference.py --dataset $CIFAR10 --labels 1000 2000 3000 4000 5000 --epochs 20 --threads 1"
  if [ -n "${DRY:-}" ]; then echo "for s in 0 1 2; do $plain --seed \$s; done > $R/plain_reference.jsonl"
  else for s in 0 1 2; do $plain --seed $s; done > $R/plain_reference.jsonl; fi
}

cold_start() {  # README: "Low budgets and label-free embeddings"; ~1 min per trial on one core
  R=results/cold_start
  fresh $R/patches
  $ACTIVECRL pretrain --dataset "$CIFAR10" --method patches --centroids 100 --device cpu --out $R/patches
  C="--config cifar10_cold_start --trials 5 --dataset $CIFAR10 --device cpu --threads 1"
  for s in random least_conf badge typiclust probcover; do      # without embeddings: random seed set, model features
    fresh $R/$s
    $ACTIVECRL run $C --strategy $s --out $R/$s
  done
  for s in random least_conf badge typiclust; do                 # with embeddings: typiclust seed set
    fresh $R/$s-emb
    $ACTIVECRL run $C --strategy $s --embeddings $R/patches --initial-strategy typiclust --out $R/$s-emb
  done
  fresh $R/probcover-emb
  $ACTIVECRL run $C --strategy probcover --embeddings $R/patches --initial-strategy probcover --out $R/probcover-emb
  runs="$R/random $R/least_conf $R/badge $R/typiclust $R/probcover $R/random-emb $R/least_conf-emb $R/badge-emb $R/typiclust-emb $R/probcover-emb"
  al_report $R $runs
}

autolabel() {  # README: "Auto-labels at a guaranteed error"; ~11 min for the shared cold start (patch features), ~3 min per feature-mode arm, ~20 min per scratch arm
  R=results/autolabel
  fresh $R
  A="bench/autolabel_payoff.py --archive $CIFAR10 --work ${AUTOLABEL_WORK:-/tmp/autolabel_payoff} --out $R"
  $PYTHON $A --rounds 8 --arms features-baseline features-crl features-sure
  $PYTHON $A --rounds 8 --arms scratch-baseline scratch-crl
  $PYTHON $A --rounds 8 --arms scratch-sure     # writes $R/table.md and $R/coverage.png
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(train al ood recipes cold_start autolabel)
for step in "${steps[@]}"; do
  case $step in
    train | al | ood | recipes | cold_start | autolabel) echo "== $step"; $step ;;
    *) echo "unknown step '$step': expected train, al, ood, recipes, cold_start or autolabel" >&2; exit 2 ;;
  esac
done
