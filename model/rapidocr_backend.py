"""The CPU reader: rapidocr (PP-OCRv6 small, shipped inside its wheel) reads page views back to text.

It reads pages at the views the downstream family keeps them at (the ladder), so what it reads from
a faded page is what that family would have to work with: a page shrunk to a mosaic cell reads back
worse, and that is the forgetting, measured rather than simulated.

Two ways to read a view:

- ``"lines"``: the renderer knows where every line is, so skip text detection, crop each line box
  and only recognise. Lines come out in the renderer's reading order, each with its box's turn.
  Header boxes (the "user 19:05:" prefix, metadata the renderer knows) are not read unless
  ``headers=True``: readers of decoded text (recall, indexing, the lab) strip them anyway.
- ``"page"``: detection, then recognition; each detected piece goes to the line box it overlaps
  most (and so to that box's turn). Detection reads a header and the first words of its turn,
  which share a row, as one line. Used whenever a view comes without line boxes.

An earlier ``bench/reader.py`` measured both on chat pages from the renderer: equal or better fidelity with
line crops at every view (0.00% vs 0.06% CER at 1024 px, 0.5% vs 0.8% at 512), and 10-25% less
time at 768-1024 px. Recognition, not detection, is most of the cost on chat pages (short lines,
lots of them), so skipping detection saves less than the textbook half; "lines" is the default.

Nothing here downloads: only the models in rapidocr's wheel are used, the text-angle classifier
stays off (pages are never rotated, and it flips lines), and a missing model is an error.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np

from optimem.model.base import Decoded, DecodedLine, LineBox, ModelUnavailable, PageView
from optimem.model.ctc_zeros import ZeroAwareDecode
from optimem.model.tiers import DEEPSEEK_OCR2, Ladder
from optimem.model.visual_tokens import VisualTokens
from optimem.renderer.faces import IDENT_DEFAULT, dotted_zero
from optimem.renderer.identifiers import restore

Mode = Literal["lines", "page"]
MODES: tuple[str, ...] = ("lines", "page")
DEFAULT_MODE: Mode = "lines"
LINES_PER_TURN_OF_LOCK = 8      # line crops recognised per hold of the engine lock


def _default_threads() -> int:
    """Every core this process may use (at most 4): reads are one at a time per process (the run
    lock), and a recall waits on them. With onnxruntime's spin-waiting off (``_reuse_memory``), 2
    threads on 2 cores answered cold recalls of 30-word turns in p95 0.95 s against 1.63 s with 1,
    and with another job holding a core 1.79-1.81 s against 1.60-1.88 s (with spinning on, 2
    threads were worse there: 2.4-2.5 s); bench/RESULTS.md. ``OPTIMEM_OCR_THREADS`` sets fewer."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


# Views whose page side is at most this (the mosaic cells) have the dotted zero's probability
# gathered before the decode (``model.ctc_zeros``). In larger views the zero keeps its dot and reads
# as itself, and gathering there turned a round capital O among digits into a zero (the probe's
# held8 at g1024: 109 of 112 exact without, 107 with).
GATHER_ZEROS_PX = 512


class RapidOcrBackend:
    """Reads page views with rapidocr on the CPU. Reader only: ``encode`` is not available.

    ``mode``: "lines" (recognise the renderer's line crops; default) or "page" (detect, then
    recognise). ``min_score``: lines the recogniser is less sure of are dropped, in both modes
    alike (0.5, rapidocr's own default). ``threads``: onnxruntime intra-op threads. ``batch``:
    line crops per recogniser call (batched crops are grouped by similar width); 1, because on
    a CPU batching saves nothing and padding every crop to the widest of its batch costs
    (``bench/reader.py``: 8 width-sorted crops a call read a page ~50% slower). ``pad``: white
    margin added above and below each line crop, as a share of its height; 0 reads best, 0.1
    reads ~15% faster for a few more errors at 512 px (the recogniser's cost grows with width
    over height). ``headers``: read the header boxes ("user 19:05:") too; off, since they are
    metadata the renderer typeset and every reader of decoded text strips them again (a whole
    page reads ~25% faster without them). ``engine``: the recogniser's runtime, "onnxruntime"
    or "openvino" (same bundled model; 10-35% faster here, but not a dependency: opt in).
    ``ident``: the identifier face the pages were typeset with (``renderer.faces.IDENT_FACES``);
    when it draws a dotted zero, what the recogniser reads as a theta or an at sign inside an
    identifier goes back to ``0`` (and the recogniser's probability for it, spread over those
    characters, is gathered before its decode: ``model.ctc_zeros``); an email's dot read as a
    comma goes back in any face
    (``renderer.identifiers.restore``: narrow, never in Greek words, an email's at sign or a handle).

    The engine loads on first use, once per instance; reads are serialised per instance, since
    one page already keeps every thread busy.
    """

    name = "rapidocr"

    def __init__(self, ladder: Ladder = DEEPSEEK_OCR2, mode: Mode = DEFAULT_MODE, *,
                 min_score: float = 0.5, threads: int | None = None, batch: int = 1,
                 pad: float = 0.0, headers: bool = False, engine: str = "onnxruntime",
                 ident: str = IDENT_DEFAULT) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown rapidocr mode {mode!r}; choose one of {MODES}")
        self.ladder = ladder
        self.mode: Mode = mode
        self.min_score = min_score
        self.threads = threads or _default_threads()
        self.batch = batch
        self.pad = pad
        self.headers = headers
        self.engine = engine      # recogniser runtime: "onnxruntime", or "openvino" (if installed)
        self._engine: Any = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._models = _bundled_models()    # raises ModelUnavailable on a missing or broken install
        self.zeros = dotted_zero(ident)
        # Reading header boxes or not, or what ``restore`` puts back, changes what a page reads back
        # as: a cache key of its own (reads cached before are not reused).
        self.revision = (f"rapidocr-{metadata.version('rapidocr')}/"
                         f"{'+'.join(p.stem for p in self._models)}/{mode}"
                         f"{'+headers' if headers and mode == 'lines' else ''}"
                         f"{'' if engine == 'onnxruntime' else '+' + engine}"
                         f"+ids3{'+zeros' if self.zeros else ''}")

    @property
    def reads_line_subsets(self) -> bool:
        """Whether a view carrying only some line boxes is read as just those lines (one turn's
        lines for recall: ~0.15 s instead of a whole page's 5-17 s)."""
        return self.mode == "lines"

    # --- interface -------------------------------------------------------------------------

    def encode(self, views: list[PageView]) -> list[VisualTokens]:
        raise NotImplementedError(
            "rapidocr only reads pages back to text; visual tokens need a visual-token model: "
            "set OPTIMEM_BACKEND=deepseek-ocr2 (GPU, local weights)")

    def decode(self, views: list[PageView]) -> list[Decoded]:
        """Text of each view, line by line in reading order, each line with its turn when known."""
        engine = self._load()
        out = []
        for view in views:
            start = time.perf_counter()
            image = _bgr(view.image)
            gather = self.zeros and view.tier.px <= GATHER_ZEROS_PX
            if self.mode == "lines" and view.lines:
                lines = self._read_lines(engine, image, view.lines, gather)   # serialised per chunk of lines
            else:
                with self._run_lock:
                    _gather_zeros(engine, gather)
                    lines = self._read_page(engine, image, view.lines)
            lines = [DecodedLine(restore(line.text, self.zeros), line.score, line.turn) for line in lines]
            out.append(Decoded("\n".join(line.text for line in lines), lines,
                               time.perf_counter() - start))
        return out

    # --- reading ---------------------------------------------------------------------------

    def _read_lines(self, engine: Any, image: np.ndarray, boxes: list[LineBox],
                    gather: bool = False) -> list[DecodedLine]:
        """Recognition only, on each line box's crop, in the renderer's reading order. Header boxes
        (the "user 19:05:" prefix the renderer typeset from the turn's metadata) are not read
        unless ``headers``: every reader of decoded text strips them again."""
        h, w = image.shape[:2]
        crops, owners = [], []
        for line in boxes:
            if line.kind == "header" and not self.headers:
                continue
            x0, y0, x1, y1 = (int(v) for v in line.box)
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            crop = image[y0:y1, x0:x1]
            if margin := round(self.pad * (y1 - y0)):   # white, never the neighbouring rows' ink
                crop = np.pad(crop, ((margin, margin), (0, 0), (0, 0)), constant_values=255)
            crops.append(np.ascontiguousarray(crop))
            owners.append(line.turn)
        if not crops:
            return []
        # The engine is taken per chunk of lines, not per page: a short read (one turn's lines for
        # a recall) waits for one chunk of a whole-page read in progress, not for all of it.
        # Batched (batch > 1), chunks take crops of similar width-to-height ratio, since every crop
        # of a recogniser batch is padded to the widest one's; results go back in reading order.
        order = list(range(len(crops)))
        if self.batch > 1:
            order.sort(key=lambda i: crops[i].shape[1] / crops[i].shape[0])
        read: dict[int, tuple[str, float]] = {}
        for i in range(0, len(order), LINES_PER_TURN_OF_LOCK):
            chunk = order[i:i + LINES_PER_TURN_OF_LOCK]
            with self._run_lock:
                _gather_zeros(engine, gather)
                rec = engine.recognize_txt([crops[j] for j in chunk])
            read.update(zip(chunk, zip(rec.txts, rec.scores)))
        return [DecodedLine(text.strip(), float(score), owners[i])
                for i, (text, score) in sorted(read.items())
                if text.strip() and score >= self.min_score]

    def _read_page(self, engine: Any, image: np.ndarray, boxes: list[LineBox]) -> list[DecodedLine]:
        """Detection and recognition. Each detected piece goes to the line box it overlaps most
        (so to its turn); pieces under one box make one line, in the renderer's reading order.
        Pieces under no box (or with no boxes given) make lines of their own, row by row, placed
        by height among the rest."""
        result = engine(image)
        if result.boxes is None or result.txts is None or len(result.txts) == 0:
            return []
        pieces = []
        for quad, text, score in zip(result.boxes, result.txts, result.scores):
            if text.strip():
                xs, ys = np.asarray(quad, dtype=float).T
                pieces.append(_Piece(xs.min(), ys.min(), xs.max(), ys.max(), text.strip(), float(score)))
        by_box: dict[int, list[_Piece]] = {}
        loose: list[list[_Piece]] = []
        for piece in sorted(pieces, key=lambda p: (p.centre, p.x0)):
            i = _best_line(boxes, piece)
            if i is not None:
                by_box.setdefault(i, []).append(piece)
                continue
            row = next((r for r in loose if r[0].y0 <= piece.centre <= r[0].y1), None)
            if row is None:
                loose.append([piece])
            else:
                row.append(piece)
        # (centre y, pieces, turn): a row not inside any known line box has no turn.
        ordered: list[tuple[float, list[_Piece], int | None]] = [
            ((boxes[i].box[1] + boxes[i].box[3]) / 2, by_box[i], boxes[i].turn) for i in sorted(by_box)]
        for row in loose:
            at = next((k for k, (y, _, _) in enumerate(ordered) if y > row[0].centre), len(ordered))
            ordered.insert(at, (row[0].centre, row, None))
        lines = []
        for _, group, turn in ordered:
            group = sorted(group, key=lambda p: p.x0)
            lines.append(DecodedLine(" ".join(p.text for p in group), sum(p.score for p in group) / len(group), turn))
        return lines

    # --- engine ----------------------------------------------------------------------------

    def _load(self) -> Any:
        if self._engine is None:
            with self._load_lock:
                if self._engine is None:
                    self._engine = self._build()
        return self._engine

    def warm(self) -> None:
        """Load the engine now rather than in the first read (a server does it at start)."""
        self._load()

    def _build(self) -> Any:
        try:
            from rapidocr import RapidOCR
        except Exception as exc:  # noqa: BLE001 (any import failure means the same to the user)
            raise ModelUnavailable(f"rapidocr cannot be imported ({exc}); `pip install 'rapidocr>=3.10' "
                                   "onnxruntime`, or set OPTIMEM_BACKEND to another reader") from exc
        ort = "EngineConfig.onnxruntime"
        params = {
            "Global.use_cls": False,                 # pages are never rotated; on, it flips lines
            "Global.text_score": self.min_score,
            "Global.log_level": "warning",
            f"{ort}.intra_op_num_threads": self.threads,
            f"{ort}.inter_op_num_threads": 1,
            "Rec.rec_batch_num": self.batch,
        }
        if self.engine == "openvino":       # the same bundled ONNX model, run by OpenVINO
            from rapidocr import EngineType
            params.update({"Rec.engine_type": EngineType.OPENVINO, "Rec.model_path": str(self._models[1]),
                           "EngineConfig.openvino.inference_num_threads": self.threads})
        elif self.engine != "onnxruntime":
            raise ValueError(f"unknown rapidocr engine {self.engine!r}")
        try:
            engine = RapidOCR(params=params)
            # Load both models now, so a broken install fails here and not mid-read.
            recognizer = engine._load_rec_model()
            engine._load_det_model()
            if self.zeros:      # the dotted zero's probability, gathered before the decode of small views
                recognizer.postprocess_op = ZeroAwareDecode(recognizer.postprocess_op)
            if self.engine == "onnxruntime":
                _reuse_memory(recognizer.session, self._models[1])
        except Exception as exc:  # noqa: BLE001
            raise ModelUnavailable(f"rapidocr could not load its bundled models ({exc}); reinstall "
                                   "rapidocr and onnxruntime, or set OPTIMEM_BACKEND to another reader") from exc
        return engine


@dataclass
class _Piece:
    """One box the detector found, and what was read in it."""
    x0: float
    y0: float
    x1: float
    y1: float
    text: str
    score: float

    @property
    def centre(self) -> float:
        return (self.y0 + self.y1) / 2


def _best_line(boxes: list[LineBox], piece: _Piece) -> int | None:
    """Index of the line box the piece overlaps most (by area, then by height: a header and its
    turn's first words share a row); None unless that covers half the height of the piece or the
    box, so a detection spilling onto the row above or below is not taken for it."""
    def overlap(box: tuple[int, int, int, int]) -> tuple[float, float]:
        x0, y0, x1, y1 = box
        dy = max(0.0, min(piece.y1, y1) - max(piece.y0, y0))
        dx = max(0.0, min(piece.x1, x1) - max(piece.x0, x0))
        return dx * dy, dy
    if not boxes:
        return None
    (_, height), best = max((overlap(line.box), i) for i, line in enumerate(boxes))
    _, y0, _, y1 = boxes[best].box
    return best if height >= 0.5 * min(piece.y1 - piece.y0, y1 - y0) and height > 0 else None


def _reuse_memory(session: Any, model: Path) -> None:
    """Reload rapidocr's recogniser session with onnxruntime's memory pattern off, its memory
    arena on and its threads not spinning (rapidocr has a setting for none of them here). Every
    line crop is an input width of its own: with the pattern on, the session kept memory per input shape it had seen (a reader grew
    ~250 MB over its first 250 crops and went on with each new width; issue 10's soak). With the
    arena off, each run's tensors were malloc'ed and freed, and glibc kept the freed memory in
    swings of ~100 MB. Pattern off and arena on, the arena grows to one run's peak and is reused:
    500 crops of random widths read in 232-278 MB and 41 s, against 203-390 MB and 44 s."""
    import onnxruntime as ort

    options = session.session.get_session_options()
    options.enable_mem_pattern = False
    options.enable_cpu_mem_arena = True
    # Threads sleep between runs instead of spinning: spinning threads took the cores the API and
    # another job needed (cold recalls 2.4-2.5 s p95 against 1.8 s with a core taken).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session.session = ort.InferenceSession(str(model), sess_options=options, providers=session.session.get_providers())


def _gather_zeros(engine: Any, on: bool) -> None:
    """Whether the recogniser's next decode gathers the dotted zero's probability (the caller
    holds the run lock)."""
    decoder = engine.text_rec.postprocess_op if engine.text_rec is not None else None
    if isinstance(decoder, ZeroAwareDecode):
        decoder.active = on


def _bgr(image: Any) -> np.ndarray:
    """A PIL image as the contiguous 3-channel BGR array rapidocr's models expect."""
    rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _bundled_models() -> tuple[Path, ...]:
    """The det and rec model files in rapidocr's wheel; ModelUnavailable if any is missing.

    Checked up front because rapidocr fetches a missing model from the network, which here
    must never happen (and fails offline with a less helpful message).
    """
    try:
        import onnxruntime  # noqa: F401  rapidocr 3.x needs it but does not depend on it
        import rapidocr
        from rapidocr.inference_engine.base import FileInfo, InferSession
        from rapidocr.utils.parse_parameters import ParseParams
    except Exception as exc:  # noqa: BLE001
        raise ModelUnavailable(f"the rapidocr reader cannot start: {exc}; `pip install 'rapidocr>=3.10' "
                               "onnxruntime`, or set OPTIMEM_BACKEND to another reader") from exc
    root = Path(rapidocr.__file__).parent
    cfg = ParseParams.load(root / "config.yaml")
    paths = []
    for task in (cfg.Det, cfg.Rec):
        info = FileInfo(engine_type=task.engine_type, ocr_version=task.ocr_version,
                        task_type=task.task_type, lang_type=task.lang_type, model_type=task.model_type)
        url = InferSession.get_model_url(info)["model_dir"]
        path = root / "models" / Path(url).name
        if not path.is_file():
            raise ModelUnavailable(f"rapidocr's bundled model {path.name} is missing from {path.parent}; "
                                   "reinstall rapidocr (its wheel ships it; optimem never downloads models)")
        paths.append(path)
    return tuple(paths)
