"""Driftless Training Data: photos (or latents) and captions, encoded by the graph's VAE and CLIP."""

from comfy_api.latest import io

from .validation import CheckedNode

TRAINING_DATA = io.Custom("DRIFTLESS_TRAINING_DATA")


def split_captions(captions: str, count: int) -> list[str]:
    """One shared caption, or one per image (one per line); anything else is an error."""
    lines = [line.strip() for line in captions.strip().splitlines() if line.strip()]
    if not lines:
        raise ValueError("captions are empty: give one caption for all images, or one line per image")
    if len(lines) == 1:
        return lines * count
    if len(lines) != count:
        raise ValueError(f"{len(lines)} caption lines for {count} images: give one line per image, or a single line for all")
    return lines


class TrainingData(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessTrainingData",
            display_name="Driftless Training Data",
            category="Driftless/train",
            description=(
                "The subject's photos and their captions, ready for Driftless Train LoRA: images are encoded "
                "by the VAE (or latents are taken as they are), captions and the empty (null) prompt by the CLIP."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder of the model you will train (from Load Checkpoint)."),
                io.String.Input(
                    "captions",
                    multiline=True,
                    default="a photo of sks dog",
                    tooltip="One caption for every image, or one line per image in batch order. Put the trigger "
                    "word (e.g. 'sks') next to the class noun: 'a photo of sks dog'.",
                ),
                io.Image.Input("images", optional=True, tooltip="The subject's photos (one batch, same size). Needs a VAE."),
                io.Vae.Input("vae", optional=True, tooltip="Encodes the images; use the model's own VAE."),
                io.Latent.Input("latents", optional=True, tooltip="Already-encoded images, instead of images + VAE."),
            ],
            outputs=[TRAINING_DATA.Output(display_name="training_data", tooltip="Encoded examples for Train LoRA.")],
        )

    @classmethod
    def execute(cls, clip, captions, images=None, vae=None, latents=None) -> io.NodeOutput:
        from ..trainers.data import TrainingData as Data

        if latents is not None:
            samples = latents["samples"]
        elif images is not None and vae is not None:
            if images.shape[0] == 0:
                raise ValueError("the image batch is empty: load at least one photo")
            samples = vae.encode(images[:, :, :, :3])
        else:
            raise ValueError("connect either images and a VAE, or latents")
        if samples.shape[0] == 0:
            raise ValueError("no training examples: the batch is empty")
        texts = split_captions(captions, samples.shape[0])
        encode = lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))  # noqa: E731
        cache = {text: encode(text) for text in dict.fromkeys(texts)}
        return io.NodeOutput(Data(samples.clone(), [cache[t] for t in texts], encode(""), texts))


class LoadImages(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessLoadImages",
            display_name="Driftless Load Images",
            category="Driftless/train",
            description=(
                "The subject's photos from ComfyUI's input folder as one image batch, for Driftless Training Data "
                "and the metrics' reference images: one file name or pattern per line (e.g. my_subject_*.png), "
                "read as Load Image reads a file. Nothing outside the input folder is read."
            ),
            inputs=[
                io.String.Input("files", multiline=True, default="my_subject_*.png",
                                tooltip="One name or pattern per line, relative to the input folder (sub-folders "
                                "allowed; * and ? match any characters): in line order, each line's files by name."),
                io.Int.Input("size", default=0, min=0, max=8192, step=8,
                             tooltip="0: every photo at the first photo's size (others centre-cropped and scaled to "
                             "it). Above 0: every photo centre-cropped to a square and scaled to size x size."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The photos, one batch, in the order named."),
                     io.Int.Output(display_name="count", tooltip="How many photos were loaded.")],
        )

    @classmethod
    def validate_inputs(cls, files=None, **_) -> bool | str:
        from ..trainers.photos import find_photos

        if files is None:  # from a link: checked when the node runs
            return True
        try:
            find_photos(_input_folder(), files)
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def fingerprint_inputs(cls, files, size=0):
        """Photos replaced or added under the same names are read again (not taken from the cache)."""
        from ..trainers.photos import find_photos

        try:
            return str([(str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in find_photos(_input_folder(), files)])
        except ValueError:
            return ""

    @classmethod
    def execute(cls, files, size=0) -> io.NodeOutput:
        from ..trainers.photos import find_photos, load_photos

        images = load_photos(find_photos(_input_folder(), files), size)
        return io.NodeOutput(images, images.shape[0])


def _input_folder():
    import folder_paths

    return folder_paths.get_input_directory()
