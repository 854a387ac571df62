"""Reference token ids for Cairn's Gemma tokenizer test, from Google's SentencePiece.

Rebuilds a SentencePiece BPE model from a GGUF's vocabulary, scores and token types (the same
data Cairn's tokenizer is rebuilt from) and encodes the strings in testdata/gemma-tokens.json.

    python -m venv v && v/bin/pip install sentencepiece protobuf
    v/bin/python scripts/gemma-reference-tokens.py ~/.cairn/models/packages/gemma-3-270m.cmp
"""

import json
import struct
import sys

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

path = sys.argv[1]
out = sys.argv[2] if len(sys.argv) > 2 else "testdata/gemma-tokens.json"
f = open(path, "rb")
if f.read(8) == b"CAIRNMP1":  # a Cairn model package: skip its header
    (n,) = struct.unpack("<I", f.read(4))
    f.seek(12 + n)
else:
    f.seek(0)
assert f.read(4) == b"GGUF"
version, n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))
FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def string():
    (n,) = struct.unpack("<Q", f.read(8))
    return f.read(n).decode("utf-8")


def value(t):
    if t == 8:
        return string()
    if t == 9:
        (at,) = struct.unpack("<I", f.read(4))
        (n,) = struct.unpack("<Q", f.read(8))
        return [value(at) for _ in range(n)]
    return struct.unpack(FMT[t], f.read(struct.calcsize(FMT[t])))[0]


meta = {}
for _ in range(n_kv):
    k = string()
    (t,) = struct.unpack("<I", f.read(4))
    meta[k] = value(t)

m = pb.ModelProto()
m.trainer_spec.model_type = pb.TrainerSpec.BPE
m.trainer_spec.byte_fallback = True
m.trainer_spec.vocab_size = len(meta["tokenizer.ggml.tokens"])
m.trainer_spec.unk_id = meta["tokenizer.ggml.unknown_token_id"]
m.trainer_spec.bos_id = meta["tokenizer.ggml.bos_token_id"]
m.trainer_spec.eos_id = meta["tokenizer.ggml.eos_token_id"]
m.trainer_spec.pad_id = meta["tokenizer.ggml.padding_token_id"]
m.normalizer_spec.name = "identity"
m.normalizer_spec.add_dummy_prefix = False
m.normalizer_spec.remove_extra_whitespaces = False
m.normalizer_spec.escape_whitespaces = True
TYPES = {1: pb.ModelProto.SentencePiece.NORMAL, 2: pb.ModelProto.SentencePiece.UNKNOWN,
         3: pb.ModelProto.SentencePiece.CONTROL, 4: pb.ModelProto.SentencePiece.USER_DEFINED,
         5: pb.ModelProto.SentencePiece.UNUSED, 6: pb.ModelProto.SentencePiece.BYTE}
for piece, score, ty in zip(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"], meta["tokenizer.ggml.token_type"]):
    p = m.pieces.add()
    p.piece, p.score = piece, score
    p.type = TYPES[ty] if piece != "<unk>" else pb.ModelProto.SentencePiece.UNKNOWN

sp = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
cases = json.load(open(out))
for c in cases:
    c["ids"] = sp.encode(c["text"])
json.dump(cases, open(out, "w"), ensure_ascii=False, indent=1)
print(f"wrote {len(cases)} reference encodings to {out}")
