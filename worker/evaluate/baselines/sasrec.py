"""A neural sequence model retrained from scratch every day: SASRec, as a batch team runs it.

DESIGN's evaluation protocol asks for "a neural sequence model retrained every day of
event time": the setup most shops would build first with a deep-learning team, a nightly
job that fits a next-item model on the interaction log and serves it, frozen, until the
next night. The model here is SASRec (Kang & McAuley 2018, "Self-attentive sequential
recommendation"): a small causal transformer over each user's recent items whose output
is dot-multiplied with the (shared) item embeddings. SASRec rather than GRU4Rec because
attention trains all positions of a sequence in parallel, which is what two CPU cores
can afford every day, where a GRU pays for each of its sequential steps. It is trained
the way later work found it has to be to be a fair opponent: softmax cross-entropy over
the catalogue or over sampled negatives (Klenitskiy & Vasilev 2023, "Turning Dross Into
Gold Loss: is BERT4Rec really better than SASRec?"; Hidasi & Czapp 2023 make the same
point for GRU4Rec), not the original one-negative binary loss, which learns far more
slowly.

JAX trains the network (``pip install tailor-worker[neural]``); serving runs the frozen
weights in numpy. Nothing imports JAX until a :class:`Sasrec` is built, so this module
loads without it (the registry lists it, its defaults and its grid either way), and the
worker never needs it.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from worker.contract import Event
from worker.evaluate.baselines.common import BaselineBase, GrowingArray, Session

if TYPE_CHECKING:
    import jax

__all__ = ["INSTALL_HINT", "Sasrec", "jax_installed", "require_jax"]

IntArray = npt.NDArray[np.int64]
Int32Array = npt.NDArray[np.int32]
Float32Array = npt.NDArray[np.float32]

#: What to run when JAX is missing; the registry repeats it when the baseline is named.
INSTALL_HINT = "pip install tailor-worker[neural]"
#: The packages of the ``neural`` extra that this module imports.
_NEEDS = ("jax", "optax")

#: The item table grows by doubling from this many rows: a new shape means a new compile of
#: the training step (a few seconds), so it must happen a few times per log, not daily.
_FIRST_VOCABULARY = 4096
#: Standard deviation of the initial item and position embeddings: small, so that a new
#: model's scores start as its popularity bias rather than as noise of order one.
_EMBEDDING_SCALE = 0.02
#: A user's list is ranked from this many of their latest events at most (times
#: ``max_length``): enough to find ``max_length`` items the model knows.
_HISTORY_SCAN = 4


def jax_installed() -> bool:
    """Whether the ``neural`` extra is there, without importing JAX (a second or more)."""
    return all(importlib.util.find_spec(name) is not None for name in _NEEDS)


def require_jax() -> None:
    """Fail early, with the command that fixes it, when the ``neural`` extra is missing.

    JAX is pointed at the CPU unless told otherwise: probing for accelerators this
    machine class never has only prints a confusing line about a missing ``libtpu.so``.
    """
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        import jax  # noqa: F401
        import optax  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"the sasrec baseline needs JAX and optax (the neural extra): {INSTALL_HINT}"
        ) from error


@dataclass(frozen=True, slots=True)
class _Shape:
    """What the compiled functions depend on; equal shapes share one compiled network."""

    factors: int
    layers: int
    heads: int
    max_length: int
    dropout: float
    negatives: int
    learning_rate: float


@dataclass(slots=True)
class _Network:
    """The jitted pieces of one :class:`_Shape` (built once per process, see :func:`_network`)."""

    optimizer_init: Callable[[dict[str, Any]], Any]
    train_step: Callable[..., tuple[dict[str, Any], Any, Any]]
    encode_last: Callable[[dict[str, Any], Any, Any], Any]  # the reference for _serve_last


@dataclass(slots=True)
class _Fitted:
    """One day's model: the network's weights and which item row each of its ids stands for."""

    body: dict[str, Any]  # blocks and final norm, as numpy arrays
    items: Float32Array  # (known items + 1, factors), row 0 is padding
    bias: Float32Array  # (known items + 1,)
    positions: Float32Array  # (max_length, factors)
    rows: IntArray  # model id - 1 -> item row
    ids_of_rows: Int32Array  # item row -> model id (0: unknown to this model)


def _initial(shape: _Shape, vocabulary: int, generator: np.random.Generator) -> dict[str, Any]:
    """Fresh float32 weights, drawn with numpy (a jitted initialiser takes seconds to compile).

    Dense layers are scaled by 1/sqrt(fan-in), the item and position tables by 1/sqrt(d),
    so the first logits are of order one; the padding item (row 0) is zero.
    """
    d = shape.factors

    def normal(rows: int, columns: int, scale: float) -> Float32Array:
        values: Float32Array = (generator.standard_normal((rows, columns)) * scale).astype(
            np.float32
        )
        return values

    def norm() -> tuple[Float32Array, Float32Array]:
        return np.ones(d, np.float32), np.zeros(d, np.float32)

    blocks = [
        {
            "norm1": norm(),
            "qkv": normal(d, 3 * d, d**-0.5),
            "out": normal(d, d, d**-0.5),
            "norm2": norm(),
            "up": normal(d, d, d**-0.5),
            "up_bias": np.zeros(d, np.float32),
            "down": normal(d, d, d**-0.5),
            "down_bias": np.zeros(d, np.float32),
        }
        for _ in range(shape.layers)
    ]
    items = normal(vocabulary, d, _EMBEDDING_SCALE)
    items[0] = 0.0
    return {
        "items": items,
        "bias": np.zeros(vocabulary, np.float32),
        "positions": normal(shape.max_length, d, _EMBEDDING_SCALE),
        "blocks": blocks,
        "norm": norm(),
    }


@cache
def _network(shape: _Shape) -> _Network:
    """Pre-LN SASRec blocks with reverse positions, built lazily so only this imports JAX.

    Positions count back from the newest item (0 = newest), SASRec's left-padded layout:
    the query that predicts the next item always sits at position 0, in training and
    when serving. Short sequences are packed several to a row with a block-diagonal
    causal mask, so the whole log trains in one array shape.
    """
    import jax
    import jax.numpy as jnp
    import optax

    d, heads = shape.factors, shape.heads
    head = d // heads

    def layer_norm(x: jax.Array, weights: tuple[jax.Array, jax.Array]) -> jax.Array:
        mean = x.mean(-1, keepdims=True)
        variance = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(variance + 1e-6) * weights[0] + weights[1]

    def dropout(x: jax.Array, key: jax.Array | None) -> jax.Array:
        if key is None or shape.dropout <= 0:
            return x
        keep = jax.random.bernoulli(key, 1.0 - shape.dropout, x.shape)
        return jnp.where(keep, x / (1.0 - shape.dropout), 0.0)

    def encode(
        body: dict[str, Any],
        hidden: jax.Array,
        segment: jax.Array,
        key: jax.Array | None,
        last_only: bool = False,
    ) -> jax.Array:
        """(rows, width, d) embedded inputs -> hidden states; a token sees its own segment.

        ``last_only`` keeps only the newest position through the last block (serving needs
        no other state, and that block's queries and feed-forward are then 1/width).
        """
        rows, width = hidden.shape[0], hidden.shape[1]
        causal = jnp.tril(jnp.ones((width, width), dtype=bool))
        mask = (segment[:, :, None] == segment[:, None, :]) & causal[None]
        keys = list(jax.random.split(key, 1 + 2 * shape.layers)) if key is not None else None
        hidden = dropout(hidden, keys.pop() if keys else None)
        for n, block in enumerate(body["blocks"]):
            x = layer_norm(hidden, block["norm1"])
            q, k, v = jnp.split(x @ block["qkv"], 3, axis=-1)
            if last_only and n == len(body["blocks"]) - 1:
                q, hidden, mask = q[:, -1:], hidden[:, -1:], mask[:, -1:]
            queries = q.shape[1]
            q = q.reshape(rows, queries, heads, head)
            k, v = (t.reshape(rows, width, heads, head) for t in (k, v))
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * head**-0.5
            logits = jnp.where(mask[:, None], logits, -1e9)
            attended = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v)
            attended = attended.reshape(rows, queries, d) @ block["out"]
            hidden = hidden + dropout(attended, keys.pop() if keys else None)
            x = layer_norm(hidden, block["norm2"])
            x = jax.nn.relu(x @ block["up"] + block["up_bias"]) @ block["down"]
            hidden = hidden + dropout(x + block["down_bias"], keys.pop() if keys else None)
        return layer_norm(hidden, body["norm"])

    def loss(params: dict[str, Any], batch: dict[str, jax.Array], key: jax.Array) -> jax.Array:
        """Mean sampled-softmax cross-entropy of each next item.

        The ``negatives`` are drawn from the training items' frequency (popular items are
        the hard ones) and shared by the batch, and every logit is corrected by the log
        of its expected count in the sample (Bengio & Senecal; Yi et al. 2019), so the
        loss estimates the full softmax and the bias still learns popularity.
        """
        items, bias = params["items"], params["bias"]
        targets, negatives = batch["targets"], batch["negatives"]
        hidden = items[batch["inputs"]] + params["positions"][batch["positions"]]
        hidden = encode(params, hidden, batch["segments"], key)
        positive = (hidden * items[targets]).sum(-1) + bias[targets] - batch["target_log_q"]
        sampled = hidden @ items[negatives].T + (bias[negatives] - batch["negative_log_q"])
        sampled = jnp.where(negatives[None, None, :] == targets[..., None], -1e9, sampled)
        nll = jnp.logaddexp(positive, jax.nn.logsumexp(sampled, -1)) - positive
        counted = targets > 0
        mean: jax.Array = (nll * counted).sum() / jnp.maximum(counted.sum(), 1)
        return mean

    optimizer = optax.adam(shape.learning_rate)

    def train_step(
        params: dict[str, Any],
        state: Any,
        batch: dict[str, jax.Array],
        key: jax.Array,
        step: jax.Array,
    ) -> tuple[dict[str, Any], Any, jax.Array]:
        """One Adam step over every weight, the whole item table included.

        A "lazy" Adam that moves only the rows a batch touched made a step 20% cheaper at
        4k items and 2x at 16k, but lost about .01 HR@20 on Online Retail (the momentum of
        a rarely seen item's row matters); ``step`` varies the dropout masks.
        """
        value, grads = jax.value_and_grad(loss)(params, batch, jax.random.fold_in(key, step))
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    def optimizer_init(params: dict[str, Any]) -> Any:
        return optimizer.init(params)

    @jax.jit
    def encode_last(body: dict[str, Any], hidden: jax.Array, segment: jax.Array) -> jax.Array:
        """The newest position's state: what :func:`_serve_last` computes in numpy."""
        return encode(body, hidden, segment, None, last_only=True)[:, -1]

    return _Network(
        jax.jit(optimizer_init), jax.jit(train_step, donate_argnums=(0, 1)), encode_last
    )


@dataclass(slots=True)
class _Segments:
    """Training chunks: up to ``max_length`` (input, next item) pairs of one user, in order."""

    inputs: Int32Array  # by token, chunks contiguous
    targets: Int32Array
    positions: Int32Array  # newest pair of a chunk = 0
    starts: IntArray  # by chunk
    lengths: IntArray


def _segments(users: IntArray, items: Int32Array, width: int) -> _Segments:
    """Each user's pairs of consecutive events, cut into chunks of ``width`` from the newest.

    ``users``/``items`` are in time order; a user's newest pairs form a full chunk so the
    model sees the recent past with the most context, as it does when serving.
    """
    order = np.argsort(users, kind="stable")
    user, item = users[order], items[order]
    if len(user) == 0:
        empty = np.zeros(0, dtype=np.int64)
        none = np.zeros(0, dtype=np.int32)
        return _Segments(none, none, none, empty, empty)
    first = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    sizes = np.diff(np.r_[first, len(user)])
    group = np.repeat(np.arange(len(first)), sizes)
    place = np.arange(len(user)) - first[group]
    back = sizes[group] - 1 - place  # 0 for the newest event of the user
    target = np.flatnonzero(place >= 1)
    chunk = back[target] // width
    new_chunk = np.r_[True, (group[target][1:] != group[target][:-1]) | (chunk[1:] != chunk[:-1])]
    starts = np.flatnonzero(new_chunk)
    lengths = np.diff(np.r_[starts, len(target)])
    return _Segments(
        inputs=item[target - 1].astype(np.int32),
        targets=item[target].astype(np.int32),
        positions=(back[target] % width).astype(np.int32),
        starts=starts.astype(np.int64),
        lengths=lengths.astype(np.int64),
    )


def _pack(
    segments: _Segments,
    width: int,
    order: IntArray,
    multiple: int = 1,
    shuffle: np.random.Generator | None = None,
) -> dict[str, Int32Array]:
    """Chunks packed into rows of ``width``, longest first, each in the fullest row it fits.

    Best-fit decreasing fills ~98% of the slots where laying chunks end to end filled 81%
    on MovieTweetings (most users have a few events), and every empty slot costs as much
    to train as a full one. ``order`` breaks ties between equal lengths; ``shuffle``
    permutes the rows, so that a batch is not all long or all short chunks.

    Returns ``inputs``, ``targets``, ``segments`` (the chunk's number within its row, 0 =
    padding) and ``positions``, each (rows, width) with rows padded with empty ones to a
    multiple of ``multiple``; padding has target 0, which the loss ignores.
    """
    order = order[np.argsort(-segments.lengths[order], kind="stable")]
    lengths = segments.lengths[order]
    row_of = np.empty(len(order), dtype=np.int64)
    offset_of = np.empty(len(order), dtype=np.int64)
    label_of = np.empty(len(order), dtype=np.int64)
    with_room: list[list[int]] = [[] for _ in range(width + 1)]  # rows by free slots
    used: list[int] = []  # slots taken, by row
    count: list[int] = []  # chunks, by row
    for n, length in enumerate(lengths.tolist()):
        room = next((free for free in range(length, width) if with_room[free]), width)
        if room == width:
            row = len(used)
            used.append(0)
            count.append(0)
        else:
            row = with_room[room].pop()
        row_of[n], offset_of[n] = row, used[row]
        used[row] += length
        count[row] += 1
        label_of[n] = count[row]
        if room > length:
            with_room[room - length].append(row)
    rows = len(used)
    if shuffle is not None:
        row_of = shuffle.permutation(rows)[row_of]
    rows = -(-rows // multiple) * multiple
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    token = np.repeat(segments.starts[order], lengths) + within
    slot = np.repeat(row_of * width + offset_of, lengths) + within
    packed: dict[str, Int32Array] = {}
    for name, values in (
        ("inputs", segments.inputs[token]),
        ("targets", segments.targets[token]),
        ("segments", np.repeat(label_of, lengths)),
        ("positions", segments.positions[token]),
    ):
        flat = np.zeros(rows * width, dtype=np.int32)
        flat[slot] = values
        packed[name] = flat.reshape(rows, width)
    return packed


def _with_log_q(
    packed: dict[str, Int32Array], negatives: Int32Array, log_q: Float32Array
) -> dict[str, npt.NDArray[Any]]:
    """A training batch as the jitted step wants it: the sample's log-q looked up here."""
    return {
        **packed,
        "negatives": negatives,
        "target_log_q": log_q[packed["targets"]],
        "negative_log_q": log_q[negatives],
    }


def _layer_norm(x: Float32Array, weights: tuple[Float32Array, Float32Array]) -> Float32Array:
    centred = x - x.mean(-1, keepdims=True)
    scale = weights[0] / np.sqrt((centred * centred).mean(-1, keepdims=True) + 1e-6)
    normed: Float32Array = centred * scale + weights[1]
    return normed


@cache
def _causal(width: int) -> npt.NDArray[np.bool_]:
    return np.tril(np.ones((width, width), dtype=bool))


def _serve_last(
    body: dict[str, Any], hidden: Float32Array, valid: npt.NDArray[np.bool_], heads: int
) -> Float32Array:
    """The network's state at the newest position of left-padded rows, in numpy.

    The same arithmetic as the jitted encoder without dropout, only the last query through
    the last block. Serving one user after almost every event is a few dozen tiny array
    operations: numpy does them in about the time a jitted call spends in dispatch alone,
    and no shape ever needs compiling.
    """
    rows, width, d = hidden.shape
    head = d // heads
    mask = (valid[:, :, None] == valid[:, None, :]) & _causal(width)
    blocks = body["blocks"]
    for n, block in enumerate(blocks):
        qkv = _layer_norm(hidden, block["norm1"]) @ block["qkv"]
        if n == len(blocks) - 1:
            qkv_q, hidden, mask = qkv[:, -1:], hidden[:, -1:], mask[:, -1:]
        else:
            qkv_q = qkv
        queries = qkv_q.shape[1]
        q = qkv_q[..., :d].reshape(rows, queries, heads, head).transpose(0, 2, 1, 3)
        k = qkv[..., d : 2 * d].reshape(rows, width, heads, head).transpose(0, 2, 3, 1)
        v = qkv[..., 2 * d :].reshape(rows, width, heads, head).transpose(0, 2, 1, 3)
        logits = np.where(mask[:, None], (q @ k) * np.float32(head**-0.5), -np.inf)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        attended = (weights @ v).transpose(0, 2, 1, 3).reshape(rows, queries, d)
        hidden = hidden + attended @ block["out"]
        x = _layer_norm(hidden, block["norm2"])
        hidden = hidden + np.maximum(x @ block["up"] + block["up_bias"], 0.0) @ block["down"]
        hidden = hidden + block["down_bias"]
    last: Float32Array = _layer_norm(hidden[:, -1], body["norm"])
    return last


class Sasrec(BaselineBase):
    """SASRec fitted from scratch every ``retrain_every_s`` of event time, frozen between.

    Every positive event (:func:`event_weight` > 0) joins its user's history; a user's
    history in time order is the sequence (sessions are not used: DESIGN's logs have
    users or sessions, and on both the order of the user's events is what the model
    reads). At each retrain (the first positive event past a boundary of event time,
    midnight UTC for a day, before that event is learned) a fresh network is trained on
    the last ``max_train_events`` events of users not forgotten, for ``epochs`` shuffled
    passes of Adam over their (item, next item) pairs, with a softmax cross-entropy over
    ``negatives`` items drawn by popularity and shared by the batch (log-q corrected).
    Between retrains the weights do not move, but a list is computed for the user's latest
    sequence, events since the retrain included (items the model has not seen are
    skipped), as a served model would: the newest position's state against every item
    the model knows, plus that item's bias. Until the first model exists (and for users
    with no item it knows) ``_rank`` returns nothing and the popular fallback fills the
    list. ``hide_session`` and the shared ``hide_seen`` filter the list as for every
    baseline (the model itself ranks every item it knows).

    Choices that made it train well within a day's budget on two cores:

    - the output bias starts at each item's log frequency and the item embeddings start
      small (std 0.02), so a new model starts as the popularity ranking instead of noise
      (a day's few hundred Adam steps cannot move a bias by several nats): on the first
      fifth of MovieTweetings that took HR@20 from .12 to .15;
    - popularity-sampled negatives with the log-q correction (Yi et al. 2019) stand in for
      the full softmax, whose cost grows with the catalogue (4x the step time at 4k items);
    - one block over the last 10 items beats two blocks (three epochs: about the same
      training time) and 50 items on the first fifth of Online Retail, .299 HR@20 against
      .248 and .172 (the last items of the basket are the cue, as for cooccurrence and
      SKNN); short chunks of many users are packed into one array shape, so the training
      step compiles once per size of the item table (which grows by doubling);
    - the training set matters more than anything on the grid: half the epochs on half
      the events (20,000) gave .151 there instead of .299;
    - serving runs in numpy (:func:`_serve_last`): one user per call is the common case,
      where a jitted call costs more in dispatch than numpy in arithmetic.
    """

    name = "sasrec"

    def __init__(
        self,
        *,
        factors: int = 64,
        layers: int = 1,
        heads: int = 1,
        max_length: int = 10,
        epochs: int = 4,
        learning_rate: float = 0.003,
        batch_size: int = 32,
        negatives: int = 256,
        dropout: float = 0.2,
        max_train_events: int = 40_000,
        retrain_every_s: float = 86400.0,
        hide_session: bool = True,
        session_gap_s: float = 1800.0,
        seed: int = 7,
    ) -> None:
        if min(factors, layers, heads, max_length, epochs, batch_size, max_train_events) < 1:
            raise ValueError(
                "factors, layers, heads, max_length, epochs, batch_size and "
                "max_train_events must be >= 1"
            )
        if factors % heads:
            raise ValueError("factors must be a multiple of heads")
        if retrain_every_s <= 0 or learning_rate <= 0 or negatives < 1:
            raise ValueError("retrain_every_s, learning_rate and negatives must be > 0")
        if not 0.0 <= dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        require_jax()  # here, not at import: the registry lists this class without JAX
        super().__init__(hide_session=hide_session, session_gap_s=session_gap_s)
        self.shape = _Shape(factors, layers, heads, max_length, dropout, negatives, learning_rate)
        self.epochs, self.batch_size = epochs, batch_size
        self.max_train_events, self.retrain_every_s = max_train_events, retrain_every_s
        self.seed = seed
        self.retrains = 0
        self.train_seconds = 0.0
        self.train_steps = 0
        self.last_loss = float("nan")
        #: (boundary, newest event trained on) of every fit: the tests check no look-ahead.
        self.fits: list[tuple[float, float]] = []
        self._users: dict[str, int] = {}
        self._histories: dict[str, list[int]] = {}
        self._alive = GrowingArray(np.bool_)
        self._event_user = GrowingArray(np.int64)
        self._event_item = GrowingArray(np.int64)
        self._event_at = GrowingArray(np.float64)
        self._period: float | None = None
        self._fitted: _Fitted | None = None
        self._scores: dict[str, Float32Array] = {}  # filled per recommend() call

    # -- learning -------------------------------------------------------------------------

    def _tick(self, at: float) -> None:
        """Fit at the first positive event of a new period, before that event is learned.

        Periods are multiples of ``retrain_every_s`` since the epoch (for a day: midnight
        UTC, when a nightly job would run), so the fit sees exactly the events before the
        boundary; a period without events gets no fit, as a job with nothing new to read.
        """
        period = at // self.retrain_every_s
        if self._period is None:
            self._period = period
        elif period > self._period:
            self._period = period
            self._retrain(boundary=period * self.retrain_every_s)

    def _learn(
        self, event: Event, row: int, weight: float, at: float, session: Session, new: bool
    ) -> None:
        user = self._users.get(event.user_id)
        if user is None:
            user = self._users[event.user_id] = self._alive.size
            self._alive.append(True)
            self._histories[event.user_id] = []
        self._histories[event.user_id].append(row)
        self._event_user.append(user)
        self._event_item.append(row)
        self._event_at.append(at)

    def _forget(self, user_id: str) -> None:
        user = self._users.pop(user_id, None)
        self._histories.pop(user_id, None)
        self._scores.pop(user_id, None)
        if user is not None:
            self._alive.view()[user] = False

    def _retrain(self, boundary: float) -> None:
        """A new network from scratch on the latest events; kept only if it saw any pair.

        Every event learned so far is before ``boundary`` (the triggering one is learned
        after this returns); the newest ``max_train_events`` of them bound the day's work.
        """
        import jax

        started = time.perf_counter()
        users = self._event_user.view()[-self.max_train_events :]
        rows = self._event_item.view()[-self.max_train_events :]
        times = self._event_at.view()[-self.max_train_events :]
        keep = self._alive.view()[users]
        users, rows = users[keep], rows[keep]
        known = np.unique(rows)
        ids_of_rows = np.zeros(len(self.items), dtype=np.int32)
        ids_of_rows[known] = np.arange(1, len(known) + 1, dtype=np.int32)
        segments = _segments(users, ids_of_rows[rows], self.shape.max_length)
        if len(segments.targets) == 0:
            return
        params = self._train(segments, len(known))
        size = len(known) + 1
        self._fitted = _Fitted(
            body=jax.tree_util.tree_map(
                lambda leaf: np.asarray(leaf, dtype=np.float32),
                {"blocks": params["blocks"], "norm": params["norm"]},
            ),
            items=np.asarray(params["items"], dtype=np.float32)[:size],
            bias=np.asarray(params["bias"], dtype=np.float32)[:size],
            positions=np.asarray(params["positions"], dtype=np.float32),
            rows=known.astype(np.int64),
            ids_of_rows=ids_of_rows,
        )
        self.retrains += 1
        self.fits.append((boundary, float(times[keep].max())))
        self.train_seconds += time.perf_counter() - started

    def _train(self, segments: _Segments, known: int) -> dict[str, Any]:
        """``epochs`` shuffled passes of Adam over the packed chunks, from fresh weights."""
        import jax
        import jax.numpy as jnp

        vocabulary = _FIRST_VOCABULARY
        while vocabulary < known + 1:
            vocabulary *= 2
        network = _network(self.shape)
        width, batch = self.shape.max_length, self.batch_size
        generator = np.random.default_rng([self.seed, self.retrains])
        key = jax.random.PRNGKey(int(generator.integers(2**31)))
        counts = np.bincount(segments.targets, minlength=vocabulary).astype(np.float64)
        initial = _initial(self.shape, vocabulary, generator)
        # The output bias starts at the log frequency of each next item, so the first
        # steps already rank by popularity and the network learns what differs from it:
        # a day's few hundred Adam steps cannot move a bias by the several nats it needs.
        initial["bias"] = np.log(counts + 0.5).astype(np.float32)
        params: dict[str, Any] = jax.tree_util.tree_map(jnp.asarray, initial)
        state = network.optimizer_init(params)
        sample = self.shape.negatives
        with np.errstate(divide="ignore"):  # log of each item's expected count in a sample
            log_q = np.log(counts * (sample / counts.sum())).astype(np.float32)
        log_q[counts == 0] = 0.0  # never drawn, never a target
        draw = np.cumsum(counts) / counts.sum()
        loss: Any = None
        steps = 0
        for _ in range(self.epochs):
            order = generator.permutation(len(segments.lengths))
            packed = _pack(segments, width, order, multiple=batch, shuffle=generator)
            for start in range(0, len(packed["inputs"]), batch):
                rows = {name: array[start : start + batch] for name, array in packed.items()}
                drawn = np.searchsorted(draw, generator.random(sample), side="right")
                negatives = np.minimum(drawn, known).astype(np.int32)
                step = _with_log_q(rows, negatives, log_q)
                params, state, loss = network.train_step(params, state, step, key, steps)
                steps += 1
        self.train_steps += steps
        if loss is not None:
            self.last_loss = float(loss)
        return params

    # -- serving --------------------------------------------------------------------------

    def recommend(self, events: Sequence[Event], k: int) -> list[list[str]]:
        """Score every asking user in as few jitted calls as possible, then list as usual."""
        if self._fitted is not None:
            self._score(list(dict.fromkeys(event.user_id for event in events)))
        try:
            return super().recommend(events, k)
        finally:
            self._scores.clear()

    def _sequence(self, user_id: str, fitted: _Fitted) -> Int32Array:
        """The user's newest ``max_length`` events the model knows, oldest first."""
        history = self._histories.get(user_id)
        if not history:
            return np.zeros(0, dtype=np.int32)
        width = self.shape.max_length
        for span in (_HISTORY_SCAN * width, len(history)):
            recent = np.asarray(history[-span:], dtype=np.int64)
            recent = recent[recent < len(fitted.ids_of_rows)]
            ids = fitted.ids_of_rows[recent]
            ids = ids[ids > 0]
            if len(ids) >= width or span >= len(history):
                break
        return ids[-width:]

    def _score(self, user_ids: Sequence[str]) -> None:
        """Scores over the model's items for every user with an item it knows, in one pass
        as wide as the longest of their sequences."""
        fitted = self._fitted
        assert fitted is not None
        sequences = {user: self._sequence(user, fitted) for user in user_ids}
        asking = [user for user, ids in sequences.items() if len(ids)]
        if not asking:
            return
        width = max(len(sequences[user]) for user in asking)
        ids = np.zeros((len(asking), width), dtype=np.int32)
        for n, user in enumerate(asking):
            sequence = sequences[user]
            ids[n, width - len(sequence) :] = sequence
        hidden = fitted.items[ids] + fitted.positions[width - 1 :: -1][None]
        last = _serve_last(fitted.body, hidden, ids > 0, self.shape.heads)
        scores = last @ fitted.items[1:].T + fitted.bias[1:]
        for n, user in enumerate(asking):
            self._scores[user] = scores[n]

    def _rank(self, user_id: str, n: int) -> Sequence[int]:
        fitted = self._fitted
        if fitted is None:
            return ()
        scores = self._scores.get(user_id)
        if scores is None:
            self._score([user_id])
            scores = self._scores.get(user_id)
            if scores is None:
                return ()
        n = min(n, len(scores))
        if n <= 0:
            return ()
        best = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
        best = best[np.lexsort((best, -scores[best]))]
        ranked: list[int] = fitted.rows[best].tolist()
        return ranked
