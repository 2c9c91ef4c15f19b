"""The data stage: validate, convert, build KIE prompts, split and measure ERNIEKit datasets."""
