#!/usr/bin/env bash
# test_curve.sh - the command line of CURVE (common/zmq_keys.h): `keygen`
# writes server.key (mode 0600) and server.pub, one Z85 key each, and
# refuses to overwrite them without --force; both services refuse a bind
# beyond loopback without --curve-key or --insecure (exit 2, one line naming
# the endpoint and both ways out), before loading anything; a bad, missing
# or public key given as --curve-key, and a bad --loader-key of the clients,
# exit 2 naming the file. Serving with keys, and clients with and without
# them, is tests/test_curve.c.
set -u
BIN=${BIN:-bin}
. "$(dirname "$0")/check.sh"
DL=$(realpath "$BIN/dataloader"); VS=$(realpath "$BIN/vae_service"); TR=$(realpath "$BIN/trainer")
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
quiet() { "$@" >/dev/null; } # keygen's line names the files and the public key

check "dataloader keygen: exit 0" quiet "$DL" keygen --out "$t/keys"
check "keygen: server.key is mode 0600" test "$(stat -c %a "$t/keys/server.key")" = 600
check "keygen: server.pub is readable by all" test "$(stat -c %a "$t/keys/server.pub")" = 644
z85='^[]0-9a-zA-Z.:+=^!/*?&<>()@%$#{}[-]{40}$'
check "keygen: each file is one 40-character Z85 key" \
    test "$(grep -cE "$z85" "$t/keys/server.key" "$t/keys/server.pub" | cut -d: -f2 | tr '\n' ' ')" = "1 1 "
check "keygen: two lines in all (no other content)" test "$(cat "$t/keys/server.key" "$t/keys/server.pub" | wc -l)" = 2
check "keygen: no temporary file left" test "$(ls "$t/keys" | tr '\n' ' ')" = "server.key server.pub "
check "keygen: the public key is not the secret one" test "$(cat "$t/keys/server.key")" != "$(cat "$t/keys/server.pub")"
old=$(cat "$t/keys/server.pub")
bad "keygen again: refused" "$t/keys/server.key exists" "$DL" keygen --out "$t/keys"
check "keygen again: the pair is kept" test "$(cat "$t/keys/server.pub")" = "$old"
check "keygen --force: replaces the pair" quiet "$DL" keygen --out "$t/keys" --force
check "keygen --force: a new public key" test "$(cat "$t/keys/server.pub")" != "$old"
check "vae_service keygen: the same command" quiet "$VS" keygen --out "$t/vkeys"
check "vae_service keygen: mode 0600" test "$(stat -c %a "$t/vkeys/server.key")" = 600
bad "vae_service keygen again: refused" "server.key exists" "$VS" keygen --out "$t/vkeys"
rm "$t/vkeys/server.key"
bad "keygen: an existing server.pub alone also refused" "$t/vkeys/server.pub exists" "$VS" keygen --out "$t/vkeys"

# Beyond loopback without keys: refused before the data or the VAE are read
# (the paths below do not exist).
for ep in 'tcp://0.0.0.0:5599' 'tcp://*:5599' 'tcp://10.1.2.3:5599'; do
    bad "dataloader serve --endpoint $ep without keys" "--endpoint $ep is reachable from other machines" \
        "$DL" serve --text "$t/none" --tokenizer "$t/none.model" --patch-size 2 --endpoint "$ep"
    bad "vae_service serve --endpoint $ep without keys" "or --insecure" \
        "$VS" serve --vae "$t/none" --endpoint "$ep"
done
bad "the refusal says how to make keys" "dataloader keygen --out DIR" \
    "$DL" serve --text "$t/none" --tokenizer "$t/none.model" --patch-size 2 --endpoint 'tcp://0.0.0.0:5599'
bad "loopback needs no keys (the next error is the data's)" "$t/none" \
    "$DL" serve --text "$t/none" --tokenizer "$t/none.model" --patch-size 2 --endpoint 'tcp://127.0.0.1:5599'
bad "--insecure passes the check (the next error is the VAE's)" "$t/none" \
    "$VS" serve --vae "$t/none" --endpoint 'tcp://0.0.0.0:5599' --insecure
bad "--curve-key DIR passes the check (the next error is the data's)" "$t/none" \
    "$DL" serve --text "$t/none" --tokenizer "$t/none.model" --patch-size 2 --endpoint 'tcp://0.0.0.0:5599' --curve-key "$t/keys"

# Bad key files: named.
printf 'not a key\n' >"$t/junk.key"
head -c 39 "$t/keys/server.key" >"$t/short.key"
{ cat "$t/keys/server.key"; echo extra; } >"$t/long.key"
for f in junk.key short.key long.key; do
    bad "dataloader serve --curve-key $f" "$t/$f: not a CURVE key" \
        "$DL" serve --text "$t/none" --tokenizer "$t/none.model" --patch-size 2 --endpoint 'tcp://0.0.0.0:5599' --curve-key "$t/$f"
    bad "vae_service serve --curve-key $f" "$t/$f: not a CURVE key" \
        "$VS" serve --vae "$t/none" --endpoint 'tcp://0.0.0.0:5599' --curve-key "$t/$f"
done
bad "--curve-key of a missing file" "$t/missing.key" \
    "$VS" serve --vae "$t/none" --endpoint 'tcp://0.0.0.0:5599' --curve-key "$t/missing.key"
bad "--curve-key of a folder without server.key" "$t/vkeys/server.key" \
    "$VS" serve --vae "$t/none" --endpoint 'tcp://0.0.0.0:5599' --curve-key "$t/vkeys"
bad "--curve-key of the public key" "this is the public key" \
    "$DL" serve --text "$t/none" --tokenizer "$t/none.model" --patch-size 2 --endpoint 'tcp://0.0.0.0:5599' \
    --curve-key "$t/keys/server.pub"
bad "dataloader inspect --loader-key junk" "$t/junk.key: not a CURVE key" \
    "$DL" inspect --endpoint tcp://127.0.0.1:5599 --loader-key "$t/junk.key"
bad "trainer train --loader-key junk" "$t/junk.key: not a CURVE key" \
    "$TR" train --loader tcp://127.0.0.1:5599 --loader-key "$t/junk.key" --model configs/tiny.json
exit $((fails > 0))
