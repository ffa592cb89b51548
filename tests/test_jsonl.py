import json
import math

import pytest

from telly.errors import TellyError
from telly.jsonl import SchemaError, read_jsonl, write_json, write_jsonl


def test_invalid_utf8_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"code": "a"}\n\n{"code": "b\xff\xfe"}\n')
    with pytest.raises(SchemaError, match=r"train\.jsonl:3: not valid UTF-8 \(byte 0xff at column 12\)"):
        read_jsonl(path)


def test_rows_still_read_with_any_line_end(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes('{"code": "é"}\r\n{"code": "b"}'.encode())
    assert read_jsonl(path, required=("code",)) == [{"code": "é"}, {"code": "b"}]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_never_written(tmp_path, bad):
    out = tmp_path / "result.json"
    with pytest.raises(TellyError, match=r"result\.json: not written: .*JSON cannot hold"):
        write_json(out, {"test": {"mrr": bad}})
    with pytest.raises(TellyError, match=r"rows\.jsonl: not written: its row 2"):
        write_jsonl(tmp_path / "rows.jsonl", [{"x": 1.0}, {"x": bad}])
    assert not out.exists() and not (tmp_path / "rows.jsonl").exists()
    write_json(out, {"test": {"mrr": 0.5}})
    assert json.loads(out.read_text()) == {"test": {"mrr": 0.5}}
