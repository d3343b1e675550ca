"""The aggregate: per (regularizer, guidance), the mean over subjects of each subject's mean score, for all
subjects, objects and live subjects (DreamBench averages subjects, each subject weighted equally)."""

import statistics

METRICS = (("dino", "DINO"), ("clip_i", "CLIP-I"), ("clip_t", "CLIP-T"))
GROUPS = (("all", None), ("objects", "object"), ("live", "live"))


def aggregate(results: list[dict]) -> list[dict]:
    """One row per (regularizer, guidance, group) that has subjects, in the order the runs came."""
    rows, keys = [], list(dict.fromkeys((r["regularizer"], r["guidance"]) for r in results))
    for method, guidance in keys:
        mine = [r for r in results if (r["regularizer"], r["guidance"]) == (method, guidance)]
        for group, kind in GROUPS:
            members = [r for r in mine if kind is None or r["kind"] == kind]
            if not members:
                continue
            row = {"regularizer": method, "guidance": guidance, "group": group, "subjects": len(members)}
            for key, _ in METRICS:
                values = [r["scores"][key] for r in members]
                row[key] = statistics.fmean(values)
                row[f"{key}_std_over_subjects"] = statistics.stdev(values) if len(values) > 1 else 0.0
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| regularizer | guidance | subjects | n | " + " | ".join(f"{name} ↑" for _, name in METRICS) + " |",
             "|---|---|---|---|" + "---|" * len(METRICS)]
    for r in rows:
        lines.append(f"| {r['regularizer']} | {r['guidance']} | {r['group']} | {r['subjects']} | "
                     + " | ".join(f"{r[key]:.4f}" for key, _ in METRICS) + " |")
    return "\n".join(lines)


def subject_table(results: list[dict]) -> str:
    lines = ["| subject | class | kind | regularizer | guidance | " + " | ".join(name for _, name in METRICS) + " |",
             "|---|---|---|---|---|" + "---|" * len(METRICS)]
    for r in results:
        lines.append(f"| {r['subject']} | {r['class']} | {r['kind']} | {r['regularizer']} | {r['guidance']} | "
                     + " | ".join(f"{r['scores'][key]:.4f}" for key, _ in METRICS) + " |")
    return "\n".join(lines)
