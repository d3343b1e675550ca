"""Driftless Training Data: photos (or latents) and captions, encoded by the graph's VAE and CLIP."""

from comfy_api.latest import io

from .validation import CheckedNode

TRAINING_DATA = io.Custom("DRIFTLESS_TRAINING_DATA")
UNMASKED_WEIGHT = 0.1  # OneTrainer's default weight outside the mask


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
                io.Mask.Input("mask", optional=True,
                              tooltip="Masked loss: where each photo's subject is (1, white: its loss weighs 1; 0, "
                              "black: the unmasked weight). One mask for all photos, or one per photo, at the photos' "
                              "size. Load Image's mask is 1 where the image is transparent: invert it if needed."),
                io.Float.Input("unmasked_weight", default=UNMASKED_WEIGHT, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="Loss weight outside the mask (0 = learn only the subject, 1 = the mask does "
                               "nothing). Used only with a mask."),
            ],
            outputs=[TRAINING_DATA.Output(display_name="training_data", tooltip="Encoded examples for Train LoRA.")],
        )

    @classmethod
    def execute(cls, clip, captions, images=None, vae=None, latents=None, mask=None,
                unmasked_weight=UNMASKED_WEIGHT) -> io.NodeOutput:
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
        for text in dict.fromkeys(texts):
            check_caption_length(clip, text, f"the caption starting {text[:40]!r}")
        weights = None if mask is None else _mask_weights(mask, samples, unmasked_weight,
                                                          None if images is None else images.shape[1:3])
        encode = lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))  # noqa: E731
        cache = {text: encode(text) for text in dict.fromkeys(texts)}
        return io.NodeOutput(Data(samples.clone(), [cache[t] for t in texts], encode(""), texts, loss_weights=weights))


def _mask_weights(mask, samples, unmasked_weight: float, image_size) -> list:
    """One latent-size loss weight map per example from a MASK batch (one mask for all, or one per example)."""
    from ..trainers.folder_dataset import latent_weights

    mask = mask if mask.ndim == 3 else mask[None]
    n = samples.shape[0]
    if mask.shape[0] not in (1, n):
        raise ValueError(f"{mask.shape[0]} masks for {n} photos: connect one mask for all photos or one per photo")
    if image_size is not None and tuple(mask.shape[1:]) != tuple(image_size):
        raise ValueError(f"the mask is {mask.shape[2]}x{mask.shape[1]} but the photos are {image_size[1]}x"
                         f"{image_size[0]}: give masks at the photos' size")
    weights = [latent_weights(mask[i if mask.shape[0] == n else 0], tuple(samples.shape[2:]), unmasked_weight)
               for i in range(n)]
    for i, w in enumerate(weights):
        if not w.sum() > 0:
            raise ValueError(f"the mask of photo {i + 1} is empty and the unmasked weight is 0: nothing of it would be "
                             "learned; fix the mask or raise unmasked_weight")
    return weights


class FolderData(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DriftlessFolderData",
            display_name="Driftless Training Data from Folder",
            category="Driftless/train",
            description=(
                "The subject's photos from a folder under ComfyUI's input folder, each with a same-named .txt "
                "caption (photo.png + photo.txt), ready for Driftless Train LoRA. Photos of mixed sizes train near "
                "their own aspect ratio (aspect-ratio buckets); a folder named N_name repeats its photos N times "
                "(kohya's convention); photo_mask.png beside a photo weighs its loss (masked loss). Nothing outside "
                "the input folder is read."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder of the model you will train (from Load Checkpoint)."),
                io.Vae.Input("vae", tooltip="Encodes the photos; use the model's own VAE."),
                io.String.Input("folder", default="my_subject",
                                tooltip="A folder inside ComfyUI's input folder (sub-folders allowed, e.g. "
                                "people/anna): its photos and those of its sub-folders, sorted by path."),
                io.String.Input("trigger_word", default="sks",
                                tooltip="The subject's identifier, put right before the class noun in every caption "
                                "that lacks it ('a photo of a dog' -> 'a photo of a sks dog'); empty = captions as "
                                "written."),
                io.String.Input("class_noun", default="dog",
                                tooltip="The subject's class ('dog', 'woman', 'mug'): where the trigger word goes, "
                                "and {class} in the caption template."),
                io.String.Input("caption_template", default="a photo of {trigger} {class}",
                                tooltip="The caption of a photo without a .txt file (or with an empty one); "
                                "{trigger} and {class} are filled in."),
                io.Int.Input("repeats", default=1, min=1, max=1000,
                             tooltip="How often each photo counts per epoch. A folder named N_name (e.g. '10_sks dog', "
                             "kohya's convention) repeats its own photos N times instead: use it to balance folders."),
                io.Int.Input("resolution", default=512, min=64, max=4096, step=16,
                             tooltip="Training size: about resolution x resolution pixels per photo (512 for SD1.5, "
                             "1024 for SDXL, SD3.5 and Flux)."),
                io.Boolean.Input("aspect_buckets", default=True,
                                 tooltip="On: each photo trains at the size nearest its own aspect ratio (up to 2:1) "
                                 "with about resolution^2 pixels, scaled and centre-cropped; batches hold one size. "
                                 "Off: every photo centre-cropped to resolution x resolution."),
                io.Int.Input("bucket_step", default=64, min=16, max=256, step=16,
                             tooltip="Bucket sides are multiples of this many pixels (64 is usual; smaller gives "
                             "more sizes)."),
                io.Float.Input("unmasked_weight", default=UNMASKED_WEIGHT, min=0.0, max=1.0, step=0.01,
                               tooltip="Loss weight outside a photo's mask (photo_mask.png beside photo.png: white = "
                               "the subject, weight 1). 0 = learn only the subject; 1 = masks do nothing."),
            ],
            outputs=[TRAINING_DATA.Output(display_name="training_data", tooltip="Encoded examples for Train LoRA."),
                     io.String.Output(display_name="captions",
                                      tooltip="One line per photo: its file, training size, repeats, mask and caption, "
                                      "to check what will be trained.")],
        )

    @classmethod
    def validate_inputs(cls, folder=None, trigger_word="", class_noun="", caption_template="", repeats=1,
                        resolution=512, bucket_step=64, **_):
        from ..trainers.folder_dataset import scan_folder

        if isinstance(resolution, int) and isinstance(bucket_step, int) and resolution < bucket_step:
            return f"resolution ({resolution} px) must be at least the bucket step ({bucket_step} px)"
        if not all(isinstance(v, str) for v in (folder, trigger_word, class_noun, caption_template)):
            return True  # from a link: checked when the node runs
        try:
            scan_folder(_input_folder(), folder, trigger=trigger_word, class_noun=class_noun,
                        template=caption_template, repeats=repeats if isinstance(repeats, int) else 1)
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def fingerprint_inputs(cls, folder, **_):
        """Photos, captions or masks changed in the folder are read again (not taken from the cache)."""
        from ..trainers.folder_dataset import resolve_folder

        try:
            top = resolve_folder(_input_folder(), folder)
        except ValueError:
            return ""
        return str(sorted((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in top.rglob("*") if p.is_file()))

    @classmethod
    def execute(cls, clip, vae, folder, trigger_word, class_noun, caption_template, repeats, resolution,
                aspect_buckets, bucket_step, unmasked_weight) -> io.NodeOutput:
        import torch

        from ..trainers.data import TrainingData as Data
        from ..trainers.folder_dataset import latent_weights, load_folder, scan_folder

        photos = scan_folder(_input_folder(), folder, trigger=trigger_word, class_noun=class_noun,
                             template=caption_template, repeats=repeats)
        for photo in photos:
            check_caption_length(clip, photo.caption, photo.caption_file or f"{photo.path.name}'s caption (template)")
        loaded = load_folder(photos, resolution, aspect_buckets, bucket_step)
        latents: list = [None] * len(photos)
        by_size: dict[tuple, list[int]] = {}
        for i, item in enumerate(loaded):
            by_size.setdefault(tuple(item.image.shape), []).append(i)
        for members in by_size.values():  # one VAE batch per size
            encoded = vae.encode(torch.stack([loaded[i].image for i in members]))
            for i, latent in zip(members, encoded):
                latents[i] = latent.clone()
        weights = [None if item.mask is None else latent_weights(item.mask, tuple(latent.shape[1:]), unmasked_weight)
                   for item, latent in zip(loaded, latents)]
        for photo, w in zip(photos, weights):
            if w is not None and not w.sum() > 0:
                raise ValueError(f"{photo.mask} is all black and the unmasked weight is 0: nothing of "
                                 f"{photo.path.name} would be learned; fix the mask or raise unmasked_weight")
        encode = lambda text: clip.encode_from_tokens_scheduled(clip.tokenize(text))  # noqa: E731
        texts = [photo.caption for photo in photos]
        cache = {text: encode(text) for text in dict.fromkeys(texts)}
        data = Data(latents, [cache[t] for t in texts], encode(""), texts, loss_weights=weights,
                    repeats=[photo.repeats for photo in photos])
        top = _input_folder()
        lines = [f"{photo.path.relative_to(top).as_posix()}: {item.image.shape[1]}x{item.image.shape[0]}, "
                 f"x{photo.repeats}{', masked' if photo.mask else ''}: {photo.caption}"
                 for photo, item in zip(photos, loaded)]
        return io.NodeOutput(data, "\n".join(lines))


def check_caption_length(clip, caption: str, source) -> None:
    """Refuse a caption longer than the text encoder's window, naming where it came from. ComfyUI's tokenizers cut a
    long prompt into several windows of the encoder's length and encode each on its own; a caption the model never
    sees in one window trains something other than what it says."""
    for encoder, windows in clip.tokenize(caption).items():
        if len(windows) > 1:
            tokenizer = getattr(clip.tokenizer, f"clip_{encoder}", None) or getattr(clip.tokenizer, encoder, None)
            length = getattr(tokenizer, "max_length", len(windows[0]))
            name = getattr(source, "name", source)
            raise ValueError(f"{name}: the caption is longer than the text encoder's window ({encoder}: {length} "
                             f"tokens with start and end, split into {len(windows)}): shorten it")


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
