"""Shared bits of the PyTorch peers: the benchmark token pattern and peak memory."""


def pseudo_text(batch, length, vocab):
    """The same deterministic token ids as `scaleot bench` / `bench-train`."""
    return [[((b * 7919 + i * 104729) % (vocab - 17)) + 17 for i in range(length)] for b in range(batch)]


def peak_rss_mib():
    """Peak resident memory of this process (Linux VmHWM), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None
