"""The LM head and its loss, forward and backward, with torch's cross-entropy and with flantune's summed
cross-entropy (flantune/cross_entropy.py), in turn, median of 7. The shapes are a samsum step of the tiny T5
at 16 a batch: 1,168 label tokens, d_model 128, T5's vocabulary of 32,128.

    python bench/cross_entropy.py
"""

import statistics
import time

import torch
import torch.nn.functional as F

from flantune.cross_entropy import summed_cross_entropy


def main(tokens: int = 1168, d_model: int = 128, vocabulary: int = 32128, repeats: int = 7) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(tokens, d_model)
    weight = (torch.randn(vocabulary, d_model) * 0.1).requires_grad_()
    labels = torch.randint(0, vocabulary, (tokens,))
    labels[::9] = -100  # some padding

    def with_torch():
        F.cross_entropy(hidden @ weight.t(), labels, ignore_index=-100, reduction="sum").backward()

    def with_flantune():
        summed_cross_entropy(hidden @ weight.t(), labels).backward()

    seconds: dict[str, list[float]] = {"torch": [], "flantune": []}
    for _ in range(repeats):
        for name, run in (("torch", with_torch), ("flantune", with_flantune)):
            weight.grad = None
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(s) * 1000 for name, s in seconds.items()}
    for name, ms in medians.items():
        print(f"{name:9s} median {ms:7.1f} ms  runs {[round(s * 1000) for s in seconds[name]]}")
    print(f"flantune: {medians['torch'] / medians['flantune']:.2f}x torch ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
