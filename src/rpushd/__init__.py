"""rpushd: a realtime push daemon that holds browser streams and fans out."""

__version__ = "1.0.0"
REPOSITORY_URL = "https://github.com/rpushd/rpushd-python"
