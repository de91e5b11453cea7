"""The OpenAI Files and Batch API on the fake server of tests/fake_openai.py (a test double).

Routes (on the same 127.0.0.1 server): ``POST /v1/files`` (multipart upload), ``GET /v1/files/{id}/content``,
``POST /v1/batches``, ``GET /v1/batches`` (list), ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``.

A batch is ``validating`` when created, ``in_progress`` from its first poll, and is processed at the poll
number ``complete_after_polls`` (then ``completed``). Processing answers each input line through the
server's own chat logic (``FakeOpenAI.completion``), and counts it: ``lines_processed`` (all lines) and
``per_custom_id`` (a Counter) — so a request paid twice is visible. Faults:

- ``fail_line(body, custom_id, n) -> None | "error_file" | "500"``: the line goes to the error file, or
  comes back with status 500 in the output file (``n`` counts this custom_id's processings from 1);
- ``malformed_line(body, custom_id, n) -> bool``: its output line is cut short (not JSON);
- ``create_error_next``: the next that many creates make the batch but answer HTTP 500 (a lost answer);
  ``list_fail_next``: the next that many ``GET /v1/batches`` (the list, newest first) answer HTTP 500;
- ``expire_next``: the next that many batches end as ``expire_as`` (``"expired"``, or ``"cancelled"``);
  ``expire_keep`` of their lines are answered first (the partial output), the rest go to the error file
  with code ``batch_expired`` / ``batch_cancelled``.
"""

from __future__ import annotations

import collections
import email.parser
import email.policy
import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any


class FakeBatches:
    def __init__(self, fake: Any):
        self.fake = fake
        self.complete_after_polls = 1
        self.fail_line: Callable[[dict, str, int], str | None] | None = None
        self.malformed_line: Callable[[dict, str, int], bool] | None = None
        self.expire_next = 0
        self.expire_keep = 0
        self.expire_as = "expired"
        self.create_error_next = 0
        self.list_fail_next = 0
        self.lists = 0
        self.files: dict[str, tuple[bytes, str]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.polls: collections.Counter[str] = collections.Counter()
        self.lines_processed = 0
        self.per_custom_id: collections.Counter[str] = collections.Counter()
        self.created: list[str] = []  # batch ids, in order
        self.created_lines: list[int] = []  # lines per created batch
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def handles(self, path: str) -> bool:
        return path.startswith("/v1/files") or path.startswith("/v1/batches")

    # -- routes --------------------------------------------------------------------------------------
    def get(self, path: str) -> tuple[int, Any]:
        parts = path.split("?", 1)[0].strip("/").split("/")  # v1 files <id> content | v1 batches [<id>]
        if parts[1] == "files" and len(parts) == 4 and parts[3] == "content":
            if parts[2] not in self.files:
                return 404, {"error": {"message": f"no file {parts[2]}"}}
            return 200, self.files[parts[2]][0]
        if parts[1] == "batches" and len(parts) == 2:
            with self._lock:
                self.lists += 1
                if self.list_fail_next > 0:
                    self.list_fail_next -= 1
                    return 500, {"error": {"message": "injected 500 on list"}}
                data = [self.batches[b] for b in reversed(self.created)]
                return 200, {
                    "object": "list",
                    "data": data,
                    "has_more": False,
                    "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None,
                }
        if parts[1] == "batches" and len(parts) == 3:
            with self._lock:
                return self._poll(parts[2])
        return 404, {"error": {"message": f"no route {path}"}}

    def post(self, path: str, headers: Any, raw: bytes) -> tuple[int, Any]:
        parts = path.split("?", 1)[0].strip("/").split("/")
        if parts[1] == "files" and len(parts) == 2:
            data, purpose, filename = self._multipart(headers.get("Content-Type", ""), raw)
            with self._lock:
                fid = f"file-{next(self._ids)}"
                self.files[fid] = (data, purpose)
            return 200, {
                "id": fid,
                "object": "file",
                "bytes": len(data),
                "created_at": int(time.time()),
                "filename": filename,
                "purpose": purpose,
                "status": "processed",
            }
        if parts[1] == "batches" and len(parts) == 2:
            body = json.loads(raw)
            with self._lock:
                if body["input_file_id"] not in self.files:
                    return 400, {"error": {"message": "no such input file"}}
                bid = f"batch_{next(self._ids)}"
                n = len(self.files[body["input_file_id"]][0].splitlines())
                self.batches[bid] = {
                    "id": bid,
                    "object": "batch",
                    "endpoint": body["endpoint"],
                    "errors": None,
                    "input_file_id": body["input_file_id"],
                    "completion_window": body["completion_window"],
                    "status": "validating",
                    "output_file_id": None,
                    "error_file_id": None,
                    "created_at": int(time.time()),
                    "metadata": body.get("metadata"),
                    "request_counts": {"total": n, "completed": 0, "failed": 0},
                }
                self.created.append(bid)
                self.created_lines.append(n)
                if self.create_error_next > 0:
                    self.create_error_next -= 1
                    return 500, {"error": {"message": "injected 500 after creating the batch"}}
                return 200, self.batches[bid]
        if parts[1] == "batches" and len(parts) == 4 and parts[3] == "cancel":
            with self._lock:
                batch = self.batches.get(parts[2])
                if batch is None:
                    return 404, {"error": {"message": f"no batch {parts[2]}"}}
                if batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                    batch["status"] = "cancelled"
                return 200, batch
        return 404, {"error": {"message": f"no route {path}"}}

    # -- the work ------------------------------------------------------------------------------------
    def _multipart(self, ctype: str, raw: bytes) -> tuple[bytes, str, str]:
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + raw
        )
        data, purpose, filename = b"", "", "upload"
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name == "file":
                data = part.get_payload(decode=True)
                filename = part.get_filename() or filename
            elif name == "purpose":
                purpose = part.get_payload(decode=True).decode()
        return data, purpose, filename

    def _poll(self, bid: str) -> tuple[int, Any]:
        batch = self.batches.get(bid)
        if batch is None:
            return 404, {"error": {"message": f"no batch {bid}"}}
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            return 200, batch
        self.polls[bid] += 1
        batch["status"] = "in_progress"
        if self.polls[bid] >= self.complete_after_polls:
            self._process(batch)
        return 200, batch

    def _process(self, batch: dict[str, Any]) -> None:
        lines = [json.loads(x) for x in self.files[batch["input_file_id"]][0].splitlines() if x.strip()]
        expire = self.expire_next > 0
        if expire:
            self.expire_next -= 1
        out, err = [], []
        done = failed = 0
        for pos, line in enumerate(lines):
            cid, body = line["custom_id"], line["body"]
            if expire and pos >= self.expire_keep:
                err.append(
                    {
                        "id": f"batch_req_{cid[:8]}",
                        "custom_id": cid,
                        "response": None,
                        "error": {
                            "code": f"batch_{self.expire_as}",
                            "message": "This request could not be "
                            f"executed before the batch was {self.expire_as}.",
                        },
                    }
                )
                failed += 1
                continue
            self.lines_processed += 1
            self.per_custom_id[cid] += 1
            n = self.per_custom_id[cid]
            kind = self.fail_line(body, cid, n) if self.fail_line is not None else None
            if kind == "error_file":
                err.append(
                    {
                        "id": f"batch_req_{n}",
                        "custom_id": cid,
                        "response": None,
                        "error": {"code": "server_error", "message": "injected line failure"},
                    }
                )
                failed += 1
                continue
            if kind == "500":
                out.append(
                    json.dumps(
                        {
                            "id": f"batch_req_{n}",
                            "custom_id": cid,
                            "error": None,
                            "response": {
                                "status_code": 500,
                                "request_id": "r",
                                "body": {"error": {"message": "injected 500"}},
                            },
                        }
                    )
                )
                failed += 1
                continue
            _, payload = self.fake.completion(body, None)
            text = json.dumps(
                {
                    "id": f"batch_req_{n}",
                    "custom_id": cid,
                    "error": None,
                    "response": {"status_code": 200, "request_id": "r", "body": payload},
                }
            )
            if self.malformed_line is not None and self.malformed_line(body, cid, n):
                text = text[: len(text) // 2]
            out.append(text)
            done += 1
        if out:
            fid = f"file-{next(self._ids)}"
            self.files[fid] = (("\n".join(out) + "\n").encode(), "batch_output")
            batch["output_file_id"] = fid
        if err:
            fid = f"file-{next(self._ids)}"
            self.files[fid] = (("\n".join(json.dumps(e) for e in err) + "\n").encode(), "batch_output")
            batch["error_file_id"] = fid
        batch["status"] = self.expire_as if expire else "completed"
        batch["request_counts"] = {"total": len(lines), "completed": done, "failed": failed}
