"""The real-CT demo (``mim_nnunet demo``): its data (:mod:`.data`), the pipeline of stock commands
(:mod:`.run`), its settings (:mod:`.settings`) and its report (:mod:`.report`)."""
