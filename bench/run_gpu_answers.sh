#!/usr/bin/env bash
# Whole generate() answers, paired answer by answer (bench/answer_pairs.py), on the H200, one device call each
# (transformers 5.24 from .whl/; Qwen2-VL-7B shapes, random bf16 weights, SDPA, batch 1, greedy, forced lengths):
#   PART=dynamic bash bench/run_gpu_answers.sh   one image through the real tower (1,024 visual tokens, 64 new),
#                                                16k text (33 new), 1k text (33 new): the issue's targets
#   PART=static  bash bench/run_gpu_answers.sh   16k text and one image on cache_implementation="static" (transformers
#                                                compiles the decode step once per twin and prompt: fewer settings)
#   PART=static1k bash bench/run_gpu_answers.sh  1k text on the static cache, every setting (kv="drop" compact)
#   PART=more    bash bench/run_gpu_answers.sh   4,096 visual tokens, batch 8 (1k and 16k text), LLaVA-1.5-7B one
#                                                and four images, batch 1 and 8 (one image)
# Every cell times "unmodified" twice: the second row is the noise floor of the paired ratios.
# Writes $OUT/answer_pairs_*.json (per-answer series are left on the machine). ROUNDS (default 10) after a warm-up.
set -uo pipefail
source "$(dirname "$0")/gpu_setup.sh"
R=${ROUNDS:-10}
case ${PART:-dynamic} in
dynamic)
  timeout ${LIMIT:-420} python3 -m bench.answer_pairs --model qwen2-vl-7b --cells e2e:1024:64,llm:16448:33,llm:1088:33 \
    --settings "unmodified;unmodified;ratio=0;ratio=0.75,layer=2;ratio=0.75,layer=2,kv=keep" --rounds "$R" \
    --tag _dynamic --out "$OUT" 2>&1 | clean | grep -v "it/s\]" ;;
static)
  timeout ${LIMIT:-420} python3 -m bench.answer_pairs --model qwen2-vl-7b --cells llm:16448:33,e2e:1024:64 \
    --cache static --settings "unmodified;unmodified;ratio=0.75,layer=2" --rounds "$R" \
    --tag _static --out "$OUT" 2>&1 | clean | grep -v "it/s\]" ;;
static1k)
  timeout ${LIMIT:-300} python3 -m bench.answer_pairs --model qwen2-vl-7b --cells llm:1088:33 --cache static \
    --settings "unmodified;unmodified;ratio=0;ratio=0.75,layer=2;ratio=0.75,layer=2,kv=keep" --rounds "${ROUNDS:-8}" \
    --tag _static_1k --out "$OUT" 2>&1 | clean | grep -v "it/s\]" ;;
more)
  S="unmodified;unmodified;ratio=0;ratio=0.75,layer=2"
  timeout ${LIMIT:-250} python3 -m bench.answer_pairs --model llava-1.5-7b --cells e2e:576:32:1,e2e:2304:32:1,e2e:576:32:8 \
    --settings "$S" --rounds "${ROUNDS:-8}" --tag _more --out "$OUT" 2>&1 | clean | grep -v "it/s\]"
  timeout ${LIMIT2:-280} python3 -m bench.answer_pairs --model qwen2-vl-7b --cells e2e:4096:64:1,llm:1088:33:8,llm:16448:33:8 \
    --settings "$S" --rounds "${ROUNDS:-6}" --tag _more --out "$OUT" 2>&1 | clean | grep -v "it/s\]" ;;
esac
rm -rf "$OUT/raw"
