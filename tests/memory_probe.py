"""Run in a subprocess by test_memory.py: peak RSS raise of one way of getting attention views.

usage: python memory_probe.py attnscope|eager LENGTH   -> prints the raise in bytes
"""

from __future__ import annotations

import sys

import torch
import transformers as tf

from attnscope.benchmarks.common import proc_status as rss


def main(mode: str, length: int) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    # torch's fused gelu: GPT-2's default "gelu_new" spends ~4 activation-sized temporaries per MLP.
    config = tf.GPT2Config(
        n_layer=2, n_head=4, n_embd=256, n_positions=length, vocab_size=1000, activation_function="gelu"
    )
    model = tf.GPT2Model(config).eval()  # 2 layers, 4 heads, head dim 64
    ids = torch.randint(0, 1000, (1, length))
    warm = ids[:, :64]
    # One plain forward at full length first, so that the allocator's growth for the model's own
    # activations (common to both ways) is not what gets measured: the raise is what each way adds.
    with torch.no_grad():
        model(ids, use_cache=False)
    if mode == "attnscope":
        from attnscope import Extractor

        ex = Extractor(model)
        ex.trace(input_ids=warm).head_stats()

        def run():
            tr = ex.trace(input_ids=ids)
            tr.pooled(256)
            tr.received()
            tr.head_stats()
    else:
        model.set_attn_implementation("eager")

        def run():
            with torch.no_grad():
                out = model(ids, output_attentions=True, use_cache=False)
            assert out.attentions[0].shape[-1] == length

        with torch.no_grad():
            model(warm, output_attentions=True, use_cache=False)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    before = rss("VmRSS")
    run()
    print(rss("VmHWM") - before)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
