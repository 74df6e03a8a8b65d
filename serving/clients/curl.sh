#!/usr/bin/env bash
# Calls a TF-Serving-compatible model server's REST API with curl.
#
#   serving/clients/curl.sh predict  "Shares rose after the merger" "The striker scored twice"
#   serving/clients/curl.sh classify "Shares rose after the merger"
#   serving/clients/curl.sh status
#   serving/clients/curl.sh metadata
#
# Where: $TFS_REST_URL (default http://localhost:8501) and $MODEL_NAME (default
# bbc_news), or --url URL / --model NAME before the command. Prints the server's
# JSON answer; on an HTTP error prints the server's {"error": "..."} body too and
# exits 22 (curl's code for an HTTP error). The same calls work unchanged against
# TensorFlow Serving's tensorflow_model_server.
set -euo pipefail

url=${TFS_REST_URL:-http://localhost:8501}
model=${MODEL_NAME:-bbc_news}

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# One argument as a JSON string literal: backslash, quote and control characters escaped.
json_string() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  printf '"%s"' "$s"
}

# The arguments as a JSON list of strings, or of {"text": ...} Examples with `examples`.
json_list() {
  local kind=$1 sep="" item
  shift
  printf '['
  for item in "$@"; do
    if [[ $kind == examples ]]; then
      printf '%s{"text": %s}' "$sep" "$(json_string "$item")"
    else
      printf '%s%s' "$sep" "$(json_string "$item")"
    fi
    sep=", "
  done
  printf ']'
}

# --fail-with-body: non-2xx exits 22 but still shows TF Serving's {"error": ...} body.
call() {
  local rc=0
  curl --silent --show-error --fail-with-body --max-time "${CURL_MAX_TIME:-30}" "$@" || rc=$?
  echo
  return "$rc"
}

while [[ $# -gt 0 ]]; do
  case $1 in
    --url) url=$2; shift 2 ;;
    --url=*) url=${1#*=}; shift ;;
    --model) model=$2; shift 2 ;;
    --model=*) model=${1#*=}; shift ;;
    -h|--help) usage ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || usage
command=$1
shift
base="${url%/}/v1/models/${model}"

case $command in
  predict)
    # Row format: one instance per text, answered as {"predictions": [{label, score, ...}]}.
    [[ $# -ge 1 ]] || { echo "predict needs at least one text" >&2; exit 2; }
    call -H 'Content-Type: application/json' \
      -d "{\"instances\": $(json_list instances "$@")}" "${base}:predict"
    ;;
  classify)
    # One tf.Example per text (bytes feature "text"), answered as {"results": [[[label, score], ...]]}.
    [[ $# -ge 1 ]] || { echo "classify needs at least one text" >&2; exit 2; }
    call -H 'Content-Type: application/json' \
      -d "{\"signature_name\": \"classify\", \"examples\": $(json_list examples "$@")}" "${base}:classify"
    ;;
  status)
    call "${base}"
    ;;
  metadata)
    call "${base}/metadata"
    ;;
  *)
    echo "unknown command: $command (predict, classify, status or metadata)" >&2
    exit 2
    ;;
esac
