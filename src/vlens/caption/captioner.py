"""Caption images with any BLIP captioning checkpoint (``BlipForConditionalGeneration``).

>>> cap = Captioner.from_spec("builtin:blip-tiny")          # cached per spec
>>> cap.caption([img1, img2], DecodeSettings(strategy="sample", top_k=50, temperature=0.7, n=3, seed=0))
[[Caption(text='a red circle on the left', ...), ...], [...]]

The image is encoded once per batch; Hugging Face ``generate`` on BLIP's text decoder runs greedy / beam /
sampling exactly as ``BlipForConditionalGeneration.generate`` would (BOS first, then the prompt tokens). On
top of that we remove the prompt on token ids, and score every caption from ``generate``'s own raw per-step
logits (no second decoder pass): its log-probability under the model (temperature 1, no filtering), which ranks
sampled captions.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

from vlens.errors import ConfigError

STRATEGIES = ("greedy", "beam", "sample")


MIN_SAMPLE_TEMPERATURE = 1e-2
"""Colder sampling is greedy decoding (and overflows the logits)."""


@dataclass(frozen=True)
class DecodeSettings:
    """How to turn model probabilities into captions."""

    strategy: str = "greedy"
    """greedy: the most probable token at each step (one caption); beam: keep num_beams partial captions;
    sample: draw tokens at random from the (filtered, temperature-scaled) distribution."""
    num_beams: int = 3
    """beam only: partial captions kept per image (3-5 is the usual choice)."""
    length_penalty: float = 1.0
    """beam only: >1 favours longer captions, <1 shorter ones (score = log p / length**penalty)."""
    top_k: int | None = 50
    """sample only: draw from the k most probable tokens (None: no top-k limit). Small k = safer captions."""
    top_p: float = 1.0
    """sample only: nucleus sampling, draw from the smallest set of tokens holding this much probability."""
    temperature: float = 1.0
    """sample only: <1 sharpens the distribution (closer to greedy), >1 flattens it (more varied, more
    errors). 0 means greedy."""
    repetition_penalty: float = 1.0
    """>1 discourages repeating tokens already in the caption (1 = off)."""
    min_new_tokens: int = 0
    max_new_tokens: int = 30
    n: int = 1
    """captions per image (sample: n independent draws ranked by log-probability; beam: the n best beams)."""
    prompt: str | None = None
    """text the caption must continue, e.g. "a picture of"; removed from the output. None: the prompt the
    model was trained behind (its config's ``caption_prompt``; none if it has none); "": no prompt."""
    seed: int | None = None
    """makes sampling reproducible (same seed, same images, same batch size -> same captions)."""
    batch_size: int = 16

    def replace(self, **changes) -> DecodeSettings:
        return dataclasses.replace(self, **changes)

    def validated(self) -> tuple[DecodeSettings, list[str]]:
        """Check ranges; return settings with implied changes applied and notes that say what changed."""
        s, notes = self, []
        if s.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy '{s.strategy}'; choose one of {', '.join(STRATEGIES)}")
        if s.prompt is not None and not s.prompt.strip() and s.prompt != "":
            s = s.replace(prompt="")  # only spaces: no prompt, like --prompt ""
        if not s.temperature == s.temperature or s.temperature in (float("inf"), float("-inf")):
            raise ConfigError(f"temperature must be a finite number (got {s.temperature})")
        if s.temperature < 0:
            raise ConfigError(
                f"temperature must be >= 0 (got {s.temperature}); below 1 is more conservative, "
                "above 1 more varied"
            )
        if s.top_k is not None and s.top_k <= 0:
            raise ConfigError(
                f"top-k must be a positive number of tokens (got {s.top_k}); 1 is greedy, 50 a common choice"
            )
        if not 0 < s.top_p <= 1:
            raise ConfigError(f"top-p must be in (0, 1] (got {s.top_p}); 1 turns nucleus sampling off")
        if s.num_beams < 1:
            raise ConfigError(f"--num-beams must be >= 1 (got {s.num_beams})")
        if s.n < 1:
            raise ConfigError(f"--n must be >= 1 (got {s.n})")
        if s.max_new_tokens < 1 or s.min_new_tokens < 0 or s.min_new_tokens > s.max_new_tokens:
            raise ConfigError("need 0 <= min-new-tokens <= max-new-tokens and max-new-tokens >= 1")
        if s.repetition_penalty <= 0:
            raise ConfigError("repetition penalty must be > 0 (1 = off)")
        if s.batch_size < 1:
            raise ConfigError("batch size must be >= 1")
        if s.strategy == "sample" and s.temperature == 0:
            s = s.replace(strategy="greedy")
            notes.append("temperature 0 means always taking the most probable token: decoding greedily")
        elif s.strategy == "sample" and s.temperature < MIN_SAMPLE_TEMPERATURE:
            # logits / 1e-300 overflow to inf and the sampler fails on NaN probabilities; the result would be
            # greedy decoding anyway.
            s = s.replace(strategy="greedy")
            notes.append(f"temperature {s.temperature:g} is below {MIN_SAMPLE_TEMPERATURE:g}: sampling that cold "
                         "always takes the most probable token, so decoding greedily")
        if s.strategy == "greedy" and s.n > 1:
            raise ConfigError(
                f"greedy decoding gives one caption per image; use --strategy sample or beam for --n {s.n}"
            )
        if s.strategy == "beam" and s.num_beams < s.n:
            s = s.replace(num_beams=s.n)
            notes.append(f"--n {s.n} needs at least {s.n} beams: using --num-beams {s.n}")
        return s, notes


@dataclass
class Caption:
    """One caption: text without the prompt, its token ids, and its log-probability under the model."""

    text: str
    token_ids: list[int]
    logprob: float
    """sum of log p(token) over what the model emitted (temperature 1, no filtering): the caption and its end
    token, or, for a caption cut at ``max_new_tokens`` (``ended`` False), the caption's tokens alone."""
    mean_logprob: float
    """``logprob`` per token: comparable across lengths; used to rank sampled captions."""
    settings: DecodeSettings = field(repr=False)
    ended: bool = True
    """False when the caption was cut at ``max_new_tokens`` before the model ended it (raise the limit)."""


def cut_note(count: int, max_new_tokens: int) -> str:
    """What to tell a user when ``count`` captions were cut at the limit (``Caption.ended`` False)."""
    return (f"{count} caption(s) reached --max-new-tokens {max_new_tokens} before the model ended them (cut short; "
            "\"ended\": false in JSON); raise --max-new-tokens to let them finish")


_CACHE: dict[tuple[str, str], Captioner] = {}
_CACHE_LOCK = threading.Lock()


class Captioner:
    """A loaded BLIP captioner. Build it with :meth:`from_spec` (cached) or from a ``LoadedModel``."""

    def __init__(self, loaded, device: str = "cpu", dtype=None, engine: str = "torch", quantize: str = "none"):
        """``engine`` (torch | onnx | auto, :mod:`vlens.engines`): what runs the vision encoder; the text decoder
        (``generate``) always runs torch. ``quantize='int8'``: the vision encoder as an ONNX Runtime int8 export
        (it kept the quality bar: :mod:`vlens.engines.int8`)."""
        import torch

        from vlens.engines import check_engine
        from vlens.engines.int8 import check_int8

        self.quantize = check_int8("blip-vision", quantize)
        self.engine = "onnx" if self.quantize == "int8" else check_engine(engine)
        self._vision_tower = False  # not decided yet
        self.loaded = loaded
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.model = loaded.model.to(device=self.device, dtype=self.dtype).eval()
        self.tokenizer = loaded.tokenizer
        self.image_processor = loaded.image_processor
        tc = self.model.config.text_config
        self.bos_id, self.sep_id, self.pad_id = tc.bos_token_id, tc.sep_token_id, tc.pad_token_id
        self.eos_ids = {i for i in (tc.sep_token_id, tc.eos_token_id) if i is not None}
        self.context = int(tc.max_position_embeddings)
        self._lock = threading.Lock()  # one generate at a time per model (the web app calls from threads)

    @classmethod
    def from_spec(cls, spec: str | None = None, device: str | None = "auto", dtype: str | None = "auto",
                  engine: str = "torch", quantize: str = "none") -> Captioner:
        """Load (once per process) the captioner for ``spec``: hub id, local folder or ``builtin:NAME``.

        ``device``/``dtype``: see :mod:`vlens.devices` (auto = a GPU in bf16/fp16 when present, else CPU fp32).
        """
        from vlens.devices import resolve_device, resolve_dtype
        from vlens.models import default_spec, load

        spec = spec or default_spec("captioner")
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        key = (str(spec), str(dev), str(dt), engine, quantize)
        with _CACHE_LOCK:
            if key not in _CACHE:
                _CACHE[key] = cls(load(spec, "captioner"), device=dev, dtype=dt, engine=engine, quantize=quantize)
            return _CACHE[key]

    @property
    def spec(self) -> str:
        return self.loaded.spec

    def image_embeds(self, pixel_values):
        """(B, 3, S, S) -> (B, L, D): the vision encoder's output, on ONNX Runtime when the engine chose it."""
        import torch

        if self._vision_tower is False:
            from vlens.engines.towers import blip_vision_engine

            self._vision_tower = None if self.engine == "torch" else blip_vision_engine(
                self.model, self.loaded.path, self.spec, self.engine, self.quantize)
        if self._vision_tower is not None and pixel_values.device.type == "cpu":
            out = self._vision_tower(pixel_values=pixel_values.float().numpy())
            return torch.from_numpy(out).to(self.dtype)
        return self.model.vision_model(pixel_values=pixel_values).last_hidden_state

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    # ---- prompt handling -------------------------------------------------------------------------------
    @property
    def default_prompt(self) -> str:
        """The prompt the model was trained behind (``caption_prompt`` in its config), "" if none."""
        return getattr(self.model.config, "caption_prompt", None) or ""

    def resolve_prompt(self, prompt: str | None) -> str:
        """None -> the model's training prompt; anything else as given ("" = no prompt)."""
        return self.default_prompt if prompt is None else prompt

    def prefix_ids(self, prompt: str | None) -> list[int]:
        """BOS followed by the prompt's tokens (no trailing [SEP]), as BLIP's ``generate`` conditions on
        them. None or "" is no prompt (resolve the model's default first with :meth:`resolve_prompt`)."""
        if not prompt:
            return [self.bos_id]
        ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if ids and ids[0] in (self.tokenizer.cls_token_id, self.bos_id):
            ids = ids[1:]
        if ids and ids[-1] in (self.tokenizer.sep_token_id, self.sep_id):
            ids = ids[:-1]
        return [self.bos_id, *ids]

    def prepare(self, settings: DecodeSettings) -> tuple[DecodeSettings, list[str]]:
        """Validate ``settings`` against this model (prompt and caption must fit in its context) and resolve
        the default prompt (None -> the model's training prompt, so the result's prompt is never None)."""
        s, notes = settings.validated()
        s = s.replace(prompt=self.resolve_prompt(s.prompt))
        prefix = len(self.prefix_ids(s.prompt))
        if prefix >= self.context - 1:
            raise ConfigError(
                f"the prompt is {prefix - 1} tokens but this model reads at most {self.context} "
                "tokens including the caption; use a shorter prompt"
            )
        if prefix + s.max_new_tokens > self.context:  # the end token is one of the new tokens
            room = self.context - prefix
            notes.append(
                f"max-new-tokens lowered from {s.max_new_tokens} to {room} to fit the model's "
                f"{self.context}-token context"
            )
            s = s.replace(max_new_tokens=room, min_new_tokens=min(s.min_new_tokens, room))
        return s, notes

    def generate_kwargs(self, s: DecodeSettings) -> dict[str, Any]:
        kw: dict[str, Any] = dict(
            max_new_tokens=s.max_new_tokens,
            min_new_tokens=s.min_new_tokens,
            repetition_penalty=s.repetition_penalty,
            num_return_sequences=s.n,
        )
        if s.strategy == "greedy":
            kw.update(do_sample=False, num_beams=1)
        elif s.strategy == "beam":
            kw.update(
                do_sample=False, num_beams=s.num_beams, length_penalty=s.length_penalty, early_stopping=True
            )
        else:
            kw.update(
                do_sample=True, num_beams=1, top_k=s.top_k or 0, top_p=s.top_p, temperature=s.temperature
            )
        return kw

    # ---- captioning --------------------------------------------------------------------------------------
    def pixel_values(self, images):
        """RGB PIL images -> (B, 3, S, S) model input on the model's device and dtype."""
        px = self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return px.to(device=self.device, dtype=self.dtype)

    def caption(self, images, settings: DecodeSettings | None = None) -> list[list[Caption]]:
        """Captions for each image (a list of ``settings.n`` per image, best first)."""
        images = list(images)
        return self._run(lambda a, b: self.pixel_values(images[a:b]), len(images), settings)

    def caption_pixels(self, pixel_values, settings: DecodeSettings | None = None) -> list[list[Caption]]:
        """Like :meth:`caption` for images already preprocessed (B, 3, S, S) (e.g. by decode workers)."""
        return self._run(lambda a, b: pixel_values[a:b].to(device=self.device, dtype=self.dtype),
                         len(pixel_values), settings)

    def _run(self, pixels, n: int, settings: DecodeSettings | None) -> list[list[Caption]]:
        import torch

        s, _ = self.prepare(settings or DecodeSettings())
        out: list[list[Caption]] = []
        with self._lock, torch.random.fork_rng(devices=[]), torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if s.seed is not None:
                torch.manual_seed(s.seed)
            for start in range(0, n, s.batch_size):
                out += self._caption_batch(pixels(start, start + s.batch_size), s)
        return out

    def _caption_batch(self, pixel_values, s: DecodeSettings) -> list[list[Caption]]:
        import torch

        from vlens.caption.decode import generated_logprobs, strip_prompt

        b = len(pixel_values)
        image_embeds = self.image_embeds(pixel_values)  # (B, L, D)
        image_mask = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=self.device)  # (B, L)
        prefix = torch.tensor(self.prefix_ids(s.prompt), dtype=torch.long, device=self.device)  # (P,)
        input_ids = prefix.unsqueeze(0).expand(b, -1).contiguous()  # (B, P)
        out = self.model.text_decoder.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            eos_token_id=self.sep_id,
            pad_token_id=self.pad_id,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
            output_logits=True,
            return_dict_in_generate=True,
            **self.generate_kwargs(s),
        )
        seqs = out.sequences  # (B * n, P + new)
        ids = strip_prompt(seqs.cpu(), len(prefix), self.eos_ids, self.pad_id)
        # each caption's log p(what generate emitted | image, prompt) at temperature 1, from its own raw logits
        total, count, ended, ok = generated_logprobs(seqs, out.logits, len(prefix), self.eos_ids, self.pad_id,
                                                     self.sep_id, getattr(out, "beam_indices", None))
        if not bool(ok.all()):  # a generated pad token (dropped from the caption): one teacher-forced pass
            redo = (~ok).nonzero().flatten().tolist()
            t2, c2 = self.teacher_forced_logprobs(image_embeds[torch.tensor(redo) // s.n], prefix.cpu(),
                                                  [ids[i] for i in redo], ended[redo].tolist())
            total[redo], count[redo] = t2, c2
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        caps = [
            Caption(t.strip(), i, float(lp), float(lp / max(int(c), 1)), s, bool(e))
            for t, i, lp, c, e in zip(texts, ids, total.tolist(), count.tolist(), ended.tolist())
        ]
        per_image = [caps[k * s.n : (k + 1) * s.n] for k in range(b)]
        if s.strategy == "sample" and s.n > 1:  # best first: finished captions, then by probability per token
            per_image = [sorted(c, key=lambda x: (x.ended, x.mean_logprob), reverse=True) for c in per_image]
        return per_image

    def teacher_forced_logprobs(self, image_embeds, prefix, captions: list[list[int]], ended=None):
        """Sum and count of log p(caption[, end] | image, prompt) at temperature 1 by one teacher-forced decoder
        pass: image_embeds (N, L, D), one row per caption; prefix (P,) BOS + prompt ids; ``ended`` (N,) False
        for a caption cut at the length limit (its end token is not counted; default: all ended). Returns
        ((N,), (N,)) on the CPU. :meth:`caption` needs it only for a caption holding a generated pad token;
        tests use it as the reference for the scores taken from ``generate``'s logits."""
        import torch

        from vlens.caption.decode import caption_targets, token_logprobs

        seq, mask = caption_targets(len(prefix), captions, self.sep_id, self.pad_id, prefix, ended)
        mask_l = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=self.device)  # (N, L)
        logits = self.model.text_decoder(input_ids=seq.to(self.device), encoder_hidden_states=image_embeds,
                                         encoder_attention_mask=mask_l).logits  # (N, T, V)
        total, count = token_logprobs(logits[:, :-1], seq[:, 1:].to(self.device), mask.to(self.device))
        return total.float().cpu(), count.cpu()

    # ---- the decoding inspector ---------------------------------------------------------------------------
    def explain(self, image, settings: DecodeSettings | None = None, show: int = 8) -> Explanation:
        """Caption one image and say, for every generated token, which tokens the decoding settings left
        eligible and with what probability (``show`` candidates per step).

        The caption is generated exactly as :meth:`caption` would (same seed -> same caption); the per-step
        logits come from one teacher-forced pass over the generated sequence, and the settings' filters
        (repetition penalty, min-new-tokens, temperature, top-k, top-p) are applied to them by
        :func:`vlens.caption.decode.explain_steps`.
        """
        import torch

        from vlens.caption.decode import explain_steps

        s, notes = self.prepare((settings or DecodeSettings()).replace(n=1))
        if s.strategy == "beam":
            notes.append("beam search keeps whole captions by their probability, not one token at a time: "
                         "the steps show the model's distribution along the best beam, nothing filtered")
        prefix = self.prefix_ids(s.prompt)
        with self._lock, torch.random.fork_rng(devices=[]), torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if s.seed is not None:
                torch.manual_seed(s.seed)
            emb = self.image_embeds(self.pixel_values([image]))  # (1, L, D)
            ids = torch.tensor([prefix], dtype=torch.long, device=self.device)  # (1, P)
            seq = self.model.text_decoder.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), eos_token_id=self.sep_id,
                pad_token_id=self.pad_id, encoder_hidden_states=emb,
                encoder_attention_mask=torch.ones(emb.shape[:2], dtype=torch.long, device=self.device),
                **self.generate_kwargs(s))[0].tolist()  # (P + new,)
            new = seq[len(prefix):]
            if self.sep_id in new:
                new = new[:new.index(self.sep_id) + 1]  # up to and including the end token
            full = torch.tensor([prefix + new], dtype=torch.long, device=self.device)  # (1, P + T)
            logits = self.model.text_decoder(input_ids=full, encoder_hidden_states=emb).logits[0]  # (P + T, V)
            step_logits = logits[len(prefix) - 1:len(prefix) - 1 + len(new)].float().cpu()  # (T, V)
            caption = self._score_one(emb, prefix, [t for t in new if t not in self.eos_ids and t != self.pad_id],
                                      s, any(t in self.eos_ids for t in new))
        previous = [prefix + new[:t] for t in range(len(new))]
        banned = [[self.sep_id] if t < s.min_new_tokens else [] for t in range(len(new))]
        steps = explain_steps(step_logits, new, previous, s.strategy, s.temperature, s.top_k, s.top_p,
                              s.repetition_penalty, banned, show)
        greedy = self.caption([image], s.replace(strategy="greedy", seed=None))[0][0].text
        return Explanation(caption, [self.token_text(t) for t in new], steps,
                           [[self.token_text(c.token_id) for c in st.candidates] for st in steps], greedy, notes)

    def token_text(self, token_id: int) -> str:
        """A token as a reader sees it: WordPiece pieces keep their ##, end tokens read "[end]"."""
        if token_id in self.eos_ids:
            return "[end]"
        return str(self.tokenizer.convert_ids_to_tokens(int(token_id)))

    def _score_one(self, emb, prefix: list[int], ids: list[int], s: DecodeSettings, ended: bool) -> Caption:
        """One caption with its log-probability (teacher-forced, temperature 1), as :meth:`caption` scores it."""
        import torch

        from vlens.caption.decode import caption_targets, token_logprobs

        seq, mask = caption_targets(len(prefix), [ids], self.sep_id, self.pad_id, torch.tensor(prefix), [ended])
        logits = self.model.text_decoder(input_ids=seq.to(self.device), encoder_hidden_states=emb).logits
        total, count = token_logprobs(logits[:, :-1], seq[:, 1:].to(self.device), mask.to(self.device))
        text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        return Caption(text, ids, float(total[0]), float(total[0] / max(int(count[0]), 1)), s, ended)


@dataclass
class Explanation:
    """The decoding inspector's answer for one image: the caption and, per generated token, what it competed
    with (see :func:`vlens.caption.decode.explain_steps`)."""

    caption: Caption
    tokens: list[str]  # the chosen tokens as text ("[end]" for the end token)
    steps: list  # list[DecodeStep], one per generated token (the end token included when it was reached)
    candidate_tokens: list[list[str]]  # the candidates of each step as text, in the order of steps[t].candidates
    greedy_text: str  # the greedy caption of the same image, for comparison
    notes: list[str]

    @property
    def settings(self) -> DecodeSettings:
        return self.caption.settings

    def summary(self) -> dict:
        """What the steps show in a few numbers: how wide the eligible set was, how often the pick was the
        model's favourite, how probable the picks were to the model."""
        n = len(self.steps)
        if not n:
            return {"steps": 0}
        p = sorted(st.p_model for st in self.steps)
        return {"steps": n, "mean_eligible": round(sum(st.eligible for st in self.steps) / n, 2),
                "mean_effective_choices": round(sum(st.effective for st in self.steps) / n, 2),
                "top_choice_steps": sum(st.rank == 1 for st in self.steps),
                "median_p_model_of_chosen": round(p[n // 2] if n % 2 else (p[n // 2 - 1] + p[n // 2]) / 2, 4),
                "min_p_model_of_chosen": round(p[0], 4),
                "same_as_greedy": self.caption.text == self.greedy_text}

    def to_dict(self) -> dict:
        return {"caption": self.caption.text, "greedy_caption": self.greedy_text, "summary": self.summary(),
                "notes": self.notes,
                "steps": [{"step": t + 1, "token": tok, "id": st.token_id, "p_model": round(st.p_model, 5),
                           "p_sample": round(st.p_sample, 5), "rank": st.rank, "eligible": st.eligible,
                           "effective_choices": round(st.effective, 3),
                           "candidates": [{"token": ct, "id": c.token_id, "p_model": round(c.p_model, 5),
                                           "p_sample": round(c.p_sample, 5), "kept": c.kept}
                                          for ct, c in zip(cts, st.candidates)]}
                          for t, (tok, st, cts) in enumerate(zip(self.tokens, self.steps, self.candidate_tokens))]}


def caption_files(captioner: Captioner, paths, settings: DecodeSettings, skips=None):
    """Caption image files: yields ``(path, captions)``; unreadable files go to ``skips`` (a ``SkipLog``)."""
    from vlens.images import load_images_safely

    pending: list = []
    for path, img in load_images_safely(paths, skips):
        pending.append((path, img))
        if len(pending) == settings.batch_size:
            yield from zip([p for p, _ in pending], captioner.caption([i for _, i in pending], settings))
            pending = []
    if pending:
        yield from zip([p for p, _ in pending], captioner.caption([i for _, i in pending], settings))
