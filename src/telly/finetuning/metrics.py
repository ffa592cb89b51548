"""The paper's evaluation metrics for the five downstream tasks.

Maintained packages compute what they can: scikit-learn (P/R/F1,
thresholds), rouge-score (LCS), nltk (METEOR), rapidfuzz (edit similarity).
Two definitions are specific to CodeXGLUE and are written out here, each tested
on hand-computed cases: the smoothed sentence BLEU-4 of CodeSearchNet's
``bleu.py`` (code summarization) and the smoothed corpus BLEU of CodeXGLUE's
``evaluator/bleu.py`` (code generation, on Python code tokens as CodeXGLUE's py150 preprocessing reads
them: :func:`code_tokens`). chrF is sacrebleu's. CIDEr follows pycocoevalcap's
``CiderScorer`` (the package itself ships 100 MB of Java jars we do not need).
"""

from __future__ import annotations

import io
import math
import re
import sys
import tokenize
import xml.sax.saxutils
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from telly.errors import NonFiniteError


def check_finite(values: Any, what: str) -> None:
    """Fail on NaN or infinity: every comparison with NaN is false, so a broken model would rank every
    gold answer first or call every pair a non-clone, and score as if it worked."""
    bad = ~np.isfinite(np.asarray(values, dtype=float))
    if bad.any():
        raise NonFiniteError(f"{what}: {int(bad.sum())} of {bad.size} values are NaN or infinite; not scored")


# ----------------------------------------------------------------- code search


UNIXCODER_CUTOFF = 1000  # UniXcoder's evaluator looks for the gold code in the top 1000 only (else 1/rank = 0)


def retrieval_metrics(scores: np.ndarray) -> dict[str, float]:
    """MRR and R@1/5/10 of a dense ``[queries, codes]`` score matrix whose diagonal holds the right
    code (the rule of ``gold_ranks``, which ranks embeddings without the matrix)."""
    scores = np.asarray(scores)
    n_queries, n_codes = scores.shape
    if n_queries != n_codes or n_queries < 2:
        raise ValueError(f"need a square score matrix of at least 2 x 2, got {scores.shape}")
    check_finite(scores, "retrieval scores")
    return metrics_from_ranks(1 + (scores > np.diag(scores)[:, None]).sum(1))


def gold_ranks(
    queries: Any,
    codes: Any,
    gold: Any,
    *,
    query_block: int = 4096,
    code_chunk: int = 8192,
    device: Any = None,
) -> Any:
    """Each query's rank of its gold code: 1 + the number of codes that score strictly higher
    (dot product), as UniXcoder's evaluator ranks (its argsort puts tied codes in either order;
    here ties never count against the query).

    ``queries`` ``[Q, d]``, ``codes`` ``[C, d]`` (any device; moved chunk by chunk), ``gold`` ``[Q]``
    (row of each query's code in ``codes``). Scores exist one ``query_block x code_chunk`` tile at
    a time on ``device``: memory does not grow with the codebase. Two passes over the same tiles:
    the first reads the gold scores out of the tile that holds them, the second counts the higher
    ones, so the gold score is compared with scores computed exactly as it was.
    """
    import torch  # here: the other metrics need no torch

    device = torch.device(device) if device is not None else queries.device
    gold = torch.as_tensor(gold, dtype=torch.long)
    n_queries, n_codes = len(queries), len(codes)
    if len(gold) != n_queries:
        raise ValueError(f"need one gold code per query, got {len(gold)} for {n_queries} queries")
    if n_queries and (int(gold.min()) < 0 or int(gold.max()) >= n_codes):
        raise ValueError(f"gold code rows must lie in 0..{n_codes - 1}")
    ranks = torch.empty(n_queries, dtype=torch.long)
    with torch.no_grad():
        _rank_blocks(queries, codes, gold, ranks, query_block, code_chunk, device)
    return ranks


def _rank_blocks(queries: Any, codes: Any, gold: Any, ranks: Any, query_block: int, code_chunk: int, device: Any):
    import torch

    n_queries, n_codes = len(queries), len(codes)
    for q0 in range(0, n_queries, query_block):
        q = queries[q0 : q0 + query_block].to(device)
        if not bool(torch.isfinite(q).all()):
            check_finite(q.cpu(), f"query embeddings {q0}..{q0 + len(q) - 1}")
        g = gold[q0 : q0 + query_block].to(device)
        gold_score = torch.empty(len(q), dtype=q.dtype, device=device)
        higher = torch.zeros(len(q), dtype=torch.long, device=device)
        for counting in (False, True):
            for c0 in range(0, n_codes, code_chunk):
                c = codes[c0 : c0 + code_chunk].to(device=device, dtype=q.dtype)
                tile = q @ c.T
                rows = ((g >= c0) & (g < c0 + len(c))).nonzero().squeeze(1)
                if not counting:
                    if not bool(torch.isfinite(tile).all()):  # a broken code embedding, or an overflow
                        check_finite(tile.cpu(), f"scores of queries {q0}.. against codes {c0}..{c0 + len(c) - 1}")
                    gold_score[rows] = tile[rows, g[rows] - c0]
                    continue
                tile[rows, g[rows] - c0] = float("-inf")  # the gold code itself never counts
                higher += (tile > gold_score[:, None]).sum(1)
        ranks[q0 : q0 + len(q)] = 1 + higher.cpu()


def metrics_from_ranks(ranks: Any, cutoff: int = UNIXCODER_CUTOFF) -> dict[str, float]:
    """MRR as UniXcoder's evaluator (mean of 1/rank, 0 beyond ``cutoff``) and R@1/5/10 (rank <= k)."""
    ranks = np.asarray(ranks, dtype=float)
    if not len(ranks):
        raise ValueError("no queries to rank")
    out = {"mrr": float(np.mean(np.where(ranks <= cutoff, 1.0 / ranks, 0.0)))}
    for k in (1, 5, 10):
        out[f"r_at_{k}"] = float(np.mean(ranks <= k))
    return out


# ------------------------------------------------------------- clone detection


def best_threshold(scores: Sequence[float], labels: Sequence[int]) -> float:
    """The score threshold with the highest F1 on (validation) pairs; predict clone when score >= it."""
    from sklearn.metrics import precision_recall_curve

    labels = np.asarray(labels)
    check_finite(scores, "clone scores")
    if labels.min() == labels.max():
        raise ValueError("choosing a clone threshold needs both clone and non-clone pairs")
    precision, recall, thresholds = precision_recall_curve(labels, np.asarray(scores, dtype=float))
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def threshold_split(labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Valid rows in two, deterministically: ``(threshold rows, selection rows)``. Of each label's rows in
    order, the 1st, 3rd, ... choose the clone threshold and the 2nd, 4th, ... score the checkpoint, so the
    checkpoint selection never reads the rows its threshold was fitted on and both halves hold both labels."""
    labels = np.asarray(labels)
    rank = np.zeros(len(labels), dtype=int)
    for value in np.unique(labels):
        rows = np.flatnonzero(labels == value)
        if len(rows) < 2:
            raise ValueError(f"splitting valid for the clone threshold needs 2 rows of label {value}, got {len(rows)}")
        rank[rows] = np.arange(len(rows))
    return np.flatnonzero(rank % 2 == 0), np.flatnonzero(rank % 2 == 1)


def split_threshold_metrics(scores: Sequence[float], labels: Sequence[int]) -> dict[str, float]:
    """Valid's clone metrics: the threshold chosen on one half of the rows (:func:`threshold_split`), the
    metrics of the other half at it."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    fit, score = threshold_split(labels)
    return classification_metrics(scores[score], labels[score], best_threshold(scores[fit], labels[fit]))


def classification_metrics(scores: Sequence[float], labels: Sequence[int], threshold: float) -> dict[str, float]:
    from sklearn.metrics import precision_recall_fscore_support

    check_finite(scores, "clone scores")
    check_finite(threshold, "clone threshold")
    predicted = (np.asarray(scores, dtype=float) >= threshold).astype(int)
    p, r, f1, _ = precision_recall_fscore_support(labels, predicted, average="binary", zero_division=0)
    return {"precision": float(p), "recall": float(r), "f1": float(f1), "threshold": float(threshold)}


# ---------------------------------------------- smoothed sentence BLEU-4 (CSN)
# CodeSearchNet / CodeXGLUE code-to-text ``bleu.py``: NIST normalisation,
# add-one smoothing for n > 1, brevity penalty (r+1)/(c+1), averaged over sentences.

_NORMALIZE1 = [(r"<skipped>", ""), (r"-\n", ""), (r"\n", " ")]
_NORMALIZE2 = [
    (r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 "),  # punctuation
    (r"([^0-9])([\.,])", r"\1 \2 "),  # period and comma unless preceded by a digit
    (r"([\.,])([^0-9])", r" \1 \2"),  # period and comma unless followed by a digit
    (r"([0-9])(-)", r"\1 \2 "),  # dash after a digit
]


def _nist_tokens(s: str) -> list[str]:
    for pattern, repl in _NORMALIZE1:
        s = re.sub(pattern, repl, s)
    s = xml.sax.saxutils.unescape(s, {"&quot;": '"'})
    s = f" {s} ".lower()
    for pattern, repl in _NORMALIZE2:
        s = re.sub(pattern, repl, s)
    return s.split()


def _ngrams(words: Sequence[str], n: int = 4) -> Counter:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _split_puncts(line: str) -> str:
    return " ".join(re.findall(r"[\w]+|[^\s\w]", line))


def sentence_bleu_csn(reference: str, hypothesis: str, n: int = 4) -> float:
    """One sentence's smoothed BLEU-4 in [0, 1], exactly as CodeSearchNet's ``bleu.py``."""
    ref = _nist_tokens(_split_puncts(reference.strip().lower()))
    hyp = _nist_tokens(_split_puncts(hypothesis.strip().lower()))
    ref_counts = _ngrams(ref, n)
    correct = [0] * n
    for gram, count in _ngrams(hyp, n).items():
        correct[len(gram) - 1] += min(ref_counts.get(gram, 0), count)
    guess = [max(len(hyp) - k + 1, 0) for k in range(1, n + 1)]
    tiny = sys.float_info.min
    log_bleu = 0.0
    for k in range(n):
        smooth = 1 if k > 0 else 0
        log_bleu += math.log(correct[k] + smooth + tiny) - math.log(guess[k] + smooth + tiny)
    log_bleu /= n
    brevity = min(0.0, 1 - (len(ref) + 1) / (len(hyp) + 1))
    return math.exp(log_bleu + brevity)


def smoothed_bleu4(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Mean sentence BLEU-4 x 100 (the summarization BLEU of CodeXGLUE and the paper)."""
    _same_length(references, hypotheses)
    return 100.0 * float(np.mean([sentence_bleu_csn(r, h) for r, h in zip(references, hypotheses)]))


# ------------------------------------------ smoothed corpus BLEU-4 (CodeXGLUE)


def bleu_counts(
    reference: str, hypothesis: str, max_order: int = 4, tokens: Callable[[str], list[str]] = str.split
) -> list[int]:
    """One pair's share of CodeXGLUE's corpus BLEU: clipped n-gram matches and possible n-grams for
    n = 1..max_order, then reference and hypothesis lengths (``tokens``: whitespace by default). Summed over
    pairs, :func:`bleu_from_counts` of them is the corpus BLEU, so a resample of pairs needs no re-tokenising."""
    ref, hyp = tokens(reference), tokens(hypothesis)
    matches = [0] * max_order
    for gram, count in (_ngrams(hyp, max_order) & _ngrams(ref, max_order)).items():
        matches[len(gram) - 1] += count
    possible = [max(len(hyp) - k + 1, 0) for k in range(1, max_order + 1)]
    return [*matches, *possible, len(ref), len(hyp)]


def bleu_from_counts(totals: np.ndarray) -> np.ndarray:
    """CodeXGLUE's smoothed corpus BLEU x 100 from summed :func:`bleu_counts` (``totals[0..2n+1]``, any
    trailing batch shape): add-one smoothing on every order, brevity penalty exp(1 - ref/hyp) when shorter."""
    totals = np.asarray(totals, dtype=float)
    order = (totals.shape[0] - 2) // 2
    matches, possible = totals[:order], totals[order : 2 * order]
    ref_len, hyp_len = totals[2 * order], totals[2 * order + 1]
    geo_mean = np.exp(np.mean(np.log((matches + 1.0) / (possible + 1.0)), axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(ref_len > 0, hyp_len / np.where(ref_len > 0, ref_len, 1), 0.0)
        brevity = np.where(ratio > 1.0, 1.0, np.where(ratio > 0, np.exp(1 - 1.0 / np.where(ratio > 0, ratio, 1)), 0.0))
    return 100.0 * geo_mean * brevity


def corpus_bleu_codexglue(references: Sequence[str], hypotheses: Sequence[str], max_order: int = 4) -> float:
    """CodeXGLUE text-to-code ``_bleu``: whitespace tokens, corpus n-gram counts, add-one
    smoothing on every order (unigrams too, unlike sacrebleu's add-k), x 100."""
    _same_length(references, hypotheses)
    totals = np.sum([bleu_counts(r, h, max_order) for r, h in zip(references, hypotheses)], axis=0)
    return float(bleu_from_counts(totals))


# ------------------------------------------- code tokens, code BLEU, chrF (code generation)

# tokenize's token types that carry no code token: layout (indentation, line ends), comments, stream markers
_LAYOUT = {
    tokenize.COMMENT,
    tokenize.NEWLINE,
    tokenize.NL,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENCODING,
    tokenize.ENDMARKER,
}
_CODE_TOKEN = re.compile(r"\w+|[^\w\s]")


def code_tokens(code: str) -> list[str]:
    """Python code tokens as CodeXGLUE's py150 preprocessing reads them: Python's own ``tokenize`` (so ``a+b``
    is ``a + b`` and a string literal one token), comments and layout dropped. Unlike py150 the line ends
    give no ``<EOL>`` (the scored texts are whitespace-normalised: their lines are already joined) and
    literals are kept, not abstracted (a generated value is part of the answer). Code that ``tokenize`` cannot
    read to its end (a cut-off string or bracket) is split into words and single punctuation instead."""
    out = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type not in _LAYOUT and tok.string.strip():
                out.append(tok.string)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return _CODE_TOKEN.findall(code)
    return out


def code_bleu_counts(reference: str, hypothesis: str) -> list[int]:
    """:func:`bleu_counts` on :func:`code_tokens`."""
    return bleu_counts(reference, hypothesis, tokens=code_tokens)


def corpus_bleu_code(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """CodeXGLUE's smoothed corpus BLEU-4 x 100 (:func:`corpus_bleu_codexglue`) on Python code tokens."""
    _same_length(references, hypotheses)
    totals = np.sum([code_bleu_counts(r, h) for r, h in zip(references, hypotheses)], axis=0)
    return float(bleu_from_counts(totals))


def chrf(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """sacrebleu's corpus chrF (character 6-grams, beta 2; whitespace ignored), 0..100: credit for every shared
    character n-gram, so a near miss on identifiers scores where token BLEU's 4-grams score nothing."""
    from sacrebleu.metrics import CHRF

    _same_length(references, hypotheses)
    return float(CHRF().corpus_score(list(hypotheses), [list(references)]).score)


# --------------------------------------------------------------------- METEOR


class _NoSynonyms:
    """Stands in for WordNet, which cannot be downloaded here: METEOR keeps its
    exact and Porter-stem matching stages and skips the synonym stage."""

    def synsets(self, *_args, **_kwargs) -> list:
        return []


def meteor(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Mean nltk METEOR x 100 (alpha 0.9, beta 3, gamma 0.5), exact + stem matches only."""
    from nltk.translate.meteor_score import meteor_score

    _same_length(references, hypotheses)
    scores = [meteor_score([r.split()], h.split(), wordnet=_NoSynonyms()) for r, h in zip(references, hypotheses)]
    return 100.0 * float(np.mean(scores))


# -------------------------------------------------------------------- ROUGE-L


def rouge_l(references: Sequence[str], hypotheses: Sequence[str], beta: float = 1.2) -> float:
    """Mean sentence ROUGE-L F_beta x 100 with beta = 1.2 (pycocoevalcap's), LCS from rouge-score."""
    from rouge_score import rouge_scorer, tokenizers

    class _Whitespace(tokenizers.Tokenizer):
        def tokenize(self, text: str) -> list[str]:
            return text.split()

    _same_length(references, hypotheses)
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Whitespace())
    values = []
    for ref, hyp in zip(references, hypotheses):
        s = scorer.score(ref, hyp)["rougeL"]
        p, r = s.precision, s.recall
        values.append((1 + beta**2) * p * r / (r + beta**2 * p) if p > 0 and r > 0 else 0.0)
    return 100.0 * float(np.mean(values))


# ---------------------------------------------------------------------- CIDEr


def cider(references: Sequence[str], hypotheses: Sequence[str], n: int = 4) -> float:
    """Corpus CIDEr as pycocoevalcap's ``Cider`` (one reference per hypothesis):
    tf-idf n-gram vectors with document frequencies from the references, cosine per
    order, mean over orders 1..4, x 10, averaged over the corpus."""
    _same_length(references, hypotheses)
    refs = [_ngrams(r.split(), n) for r in references]
    hyps = [_ngrams(h.split(), n) for h in hypotheses]
    doc_freq = Counter(gram for counts in refs for gram in counts)
    log_n_docs = math.log(float(len(refs)))

    def vector(counts: Counter) -> tuple[list[dict], list[float]]:
        vec: list[dict] = [{} for _ in range(n)]
        norm = [0.0] * n
        for gram, tf in counts.items():
            weight = float(tf) * (log_n_docs - math.log(max(1.0, doc_freq[gram])))
            vec[len(gram) - 1][gram] = weight
            norm[len(gram) - 1] += weight**2
        return vec, [math.sqrt(x) for x in norm]

    scores = []
    for ref, hyp in zip(refs, hyps):
        (vh, nh), (vr, nr) = vector(hyp), vector(ref)
        sims = []
        for k in range(n):
            dot = sum(w * vr[k].get(g, 0.0) for g, w in vh[k].items())
            sims.append(dot / (nh[k] * nr[k]) if nh[k] != 0 and nr[k] != 0 else dot)
        scores.append(10.0 * float(np.mean(sims)))
    return float(np.mean(scores))


# ------------------------------------------------------- generation, completion


def exact_match(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Share (x 100) of hypotheses whose whitespace tokens equal the reference's."""
    _same_length(references, hypotheses)
    return 100.0 * float(np.mean([r.split() == h.split() for r, h in zip(references, hypotheses)]))


def edit_similarity(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Mean fuzzywuzzy ``fuzz.ratio`` (rapidfuzz computes the same Indel ratio; rounded as fuzzywuzzy)."""
    from rapidfuzz import fuzz

    _same_length(references, hypotheses)
    return float(np.mean([round(fuzz.ratio(h, r)) for r, h in zip(references, hypotheses)]))


def _same_length(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses) or not references:
        raise ValueError(f"need as many hypotheses as references (>0), got {len(hypotheses)} and {len(references)}")
