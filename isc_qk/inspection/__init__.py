"""`isc-qk inspect`: see why a descriptor fails (an HTML error gallery).

* `analysis` - what to show, from the evaluation's one scored list: the highest-scoring false
  positives, the copies missed at the operating point, two results compared;
* `families` - micro-AP and recall per edit family / edit, from an edit manifest;
* `probe` - true ranks and nearest references of the few shown queries;
* `thumbs` - thumbnails of the shown images only; `page` - the HTML; `stage` - the command.
"""

# the defaults, declared once (the command and the API read them here: no heavy import)
SHOW = 40  # false positives and missed copies shown per result
NEIGHBOURS = 3  # references shown above a missed copy
THUMB_SIZE = 160  # thumbnail side, pixels
