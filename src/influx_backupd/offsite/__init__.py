"""Off-site copies of backups in S3-compatible object storage (issue 13).

A leaf beside store/: plain inputs (a backup id, job, kind, chain parent, run record, files),
plain results. boto3 and pyrage (the `s3` extra) are imported only by the modules that talk to
the bucket or encrypt, so `settings` loads without them. The bucket layout: docs/offsite.md.
"""
